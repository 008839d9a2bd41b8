"""Read partition end offsets of topics, for `status`, lag and tests.

Note: Tansu reports a partition's high watermark as the last batch's base offset + 1, so it can
under-count by up to a batch; real Apache Kafka reports it exactly.
"""

from __future__ import annotations

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec


def end_offsets(kafka_config: dict, topics: list[str], timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
    """(topic, partition) -> high watermark for every partition of `topics` that exists."""
    admin = AdminClient(kafka_config)
    metadata = admin.list_topics(timeout=timeout_s)
    request = {
        TopicPartition(name, p): OffsetSpec.latest()
        for name in topics
        if name in metadata.topics
        for p in metadata.topics[name].partitions
    }
    if not request:
        return {}
    futures = admin.list_offsets(request, request_timeout=timeout_s)
    return {(tp.topic, tp.partition): f.result(timeout_s).offset for tp, f in futures.items()}


def topic_totals(kafka_config: dict, topics: list[str], timeout_s: float = 5.0) -> dict[str, int]:
    """topic -> sum of high watermarks over its partitions (records ever written, roughly)."""
    out = {t: 0 for t in topics}
    for (topic, _), offset in end_offsets(kafka_config, topics, timeout_s).items():
        out[topic] += max(offset, 0)
    return out
