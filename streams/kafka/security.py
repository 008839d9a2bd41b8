"""Kafka security settings for the clients that are not librdkafka (faust/aiokafka in the drift job).

librdkafka clients take `STREAMML_KAFKA_*` as they are (`Settings.kafka_config()`); this maps the
same properties to faust's credentials, so SASL/SSL is configured once for every process.
"""

from __future__ import annotations

import ssl
from typing import Any

from schemas.errors import ConfigError

_SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def ssl_context(client: dict[str, str]) -> ssl.SSLContext:
    """An SSL context from librdkafka's `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`."""
    context = ssl.create_default_context(cafile=client.get("ssl.ca.location"))
    if client.get("ssl.certificate.location"):
        context.load_cert_chain(client["ssl.certificate.location"], client.get("ssl.key.location"),
                                client.get("ssl.key.password"))
    if client.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    return context


def faust_credentials(client: dict[str, str]) -> Any:
    """faust credentials for `security.protocol` PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL (None = plaintext)."""
    import faust

    protocol = client.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(client))
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism = client.get("sasl.mechanism", client.get("sasl.mechanisms", "PLAIN")).upper()
        if mechanism not in _SASL:
            raise ConfigError(f"the drift job (faust) supports SASL mechanisms {', '.join(_SASL)}, not {mechanism}; "
                              "set STREAMML_KAFKA_SASL_MECHANISM accordingly")
        if not client.get("sasl.username") or not client.get("sasl.password"):
            raise ConfigError("SASL needs STREAMML_KAFKA_SASL_USERNAME and STREAMML_KAFKA_SASL_PASSWORD")
        return faust.SASLCredentials(username=client["sasl.username"], password=client["sasl.password"],
                                     mechanism=mechanism,
                                     ssl_context=ssl_context(client) if protocol == "SASL_SSL" else None)
    raise ConfigError(f"unknown STREAMML_KAFKA_SECURITY_PROTOCOL {protocol!r}: use PLAINTEXT, SSL, SASL_PLAINTEXT "
                      "or SASL_SSL")
