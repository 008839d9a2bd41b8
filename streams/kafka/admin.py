"""Topic provisioning: create the contract topics with explicit partition counts, idempotently.

Explicit creation matters on Tansu, whose auto-created topics get 4 partitions whatever you meant.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.errors import BrokerError


def ensure_topics(
    kafka_config: dict, names: Iterable[str], partitions: int, replication: int = 1, timeout_s: float = 30.0
) -> dict[str, int]:
    """Create missing topics; returns name -> partition count for all of them (existing ones unchanged)."""
    admin = AdminClient(kafka_config)
    names = list(dict.fromkeys(names))
    where = kafka_config.get("bootstrap.servers", "?")
    existing = topic_partitions(admin, where, timeout_s)
    missing = [n for n in names if n not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(n, partitions, replication) for n in missing], operation_timeout=timeout_s
        )
        for name, future in futures.items():
            try:
                future.result(timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"could not create topic {name!r}: {exc.args[0].str()}") from exc
        deadline = time.monotonic() + timeout_s
        while any(n not in existing for n in names) and time.monotonic() < deadline:
            existing = topic_partitions(admin, where, timeout_s)
    return {n: existing.get(n, 0) for n in names}


def topic_partitions(admin: AdminClient, where: str = "?", timeout_s: float = 10.0) -> dict[str, int]:
    """Current topics of the cluster and their partition counts."""
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"Kafka broker at {where} is unreachable ({exc.args[0].str()}); start it with `streamml up` "
            "or set STREAMML_KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    return {name: len(meta.partitions) for name, meta in metadata.topics.items() if not name.startswith("__")}

