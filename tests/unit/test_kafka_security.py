"""STREAMML_KAFKA_* security settings reach the faust-based drift job as they reach librdkafka clients."""

from __future__ import annotations

import faust
import pytest

from schemas.errors import ConfigError
from streams.kafka.security import faust_credentials
from streams.settings import DriftSettings, load_settings


def test_plaintext_needs_no_credentials():
    assert faust_credentials({}) is None
    assert faust_credentials({"security.protocol": "plaintext"}) is None


def test_sasl_maps_username_password_mechanism_and_tls():
    plain = faust_credentials({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                               "sasl.username": "svc", "sasl.password": "pw"})
    assert isinstance(plain, faust.SASLCredentials)
    assert (plain.username, plain.password, plain.mechanism.value, plain.ssl_context) == ("svc", "pw", "SCRAM-SHA-512",
                                                                                           None)
    tls = faust_credentials({"security.protocol": "SASL_SSL", "sasl.username": "svc", "sasl.password": "pw"})
    assert tls.mechanism.value == "PLAIN" and tls.ssl_context is not None


def test_unsupported_or_incomplete_settings_say_what_to_set():
    with pytest.raises(ConfigError, match="SASL_USERNAME"):
        faust_credentials({"security.protocol": "SASL_SSL"})
    with pytest.raises(ConfigError, match="SASL mechanisms"):
        faust_credentials({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI", "sasl.username": "u",
                           "sasl.password": "p"})
    with pytest.raises(ConfigError, match="SECURITY_PROTOCOL"):
        faust_credentials({"security.protocol": "TLS"})


def test_drift_app_gets_the_credentials_from_the_environment(monkeypatch):
    from streams.drift.app import build_app

    monkeypatch.setenv("STREAMML_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_USERNAME", "drift")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings(DriftSettings)
    app = build_app(settings, runtime=None)
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials) and credentials.username == "drift"
    assert "hunter2" not in str(settings.redacted())
