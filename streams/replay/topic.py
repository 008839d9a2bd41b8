"""Read source topics back for replay: decode, validate and apply the lateness rule like the live source.

Each partition is read in offset order from its start (or from `since` minus the allowed lateness,
so the lateness rule has warmed up), until the end offsets seen when the replay started: records
produced after that belong to the live flow, not to this rebuild. Records the live flow dead-lettered
(undecodable, invalid) are skipped and counted, not dead-lettered a second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.arrow import arrow_schema
from schemas.errors import BrokerError, DecodeError, ReplayError
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import TopicSpec
from schemas.validation import validate
from streams.features.shard import WINDOWED_TOPICS
from streams.replay.eventlog import LogSlice
from streams.windows.lateness import admit


@dataclass(frozen=True)
class TopicRead:
    """How to read the topics: client config and bounds (event time, ms)."""

    kafka: dict[str, Any]
    registry_url: str
    lateness_ms: int
    since_ms: int | None = None
    until_ms: int | None = None
    idle_s: float = 1.0


def read_topic(read: TopicRead, spec: TopicSpec, on_records: Callable[[int], None] | None = None,
               windowed: bool | None = None) -> LogSlice:
    """One topic's accepted records in [since, until] as an Arrow table (see `topic_records`)."""
    if windowed is None:
        windowed = spec.name in WINDOWED_TOPICS
    records, late, skipped = topic_records(read, spec, on_records, windowed)
    table = pa.Table.from_pylist(records, schema=arrow_schema(spec.schema))
    return LogSlice(table, [], late, skipped)


def topic_records(read: TopicRead, spec: TopicSpec, on_records: Callable[[int], None] | None = None,
                  windowed: bool = True) -> tuple[list[dict[str, Any]], int, int]:
    """(records, late, invalid): accepted records in [since, until], partition by partition in offset
    order. `windowed` applies the lateness rule and bounds by `since`."""
    started_ms = int(time.time() * 1000)
    metadata = AdminClient(read.kafka).list_topics(spec.name, timeout=10)
    topic = metadata.topics.get(spec.name)
    if topic is None or topic.error is not None:
        raise ReplayError(f"topic {spec.name!r} does not exist on {read.kafka.get('bootstrap.servers')}; "
                          "run `streamml provision` or replay with --source parquet")
    serde = TopicSerde(spec, RegistryClient.shared(read.registry_url))
    consumer = Consumer({**read.kafka, "group.id": "streamml-replay", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    records: list[dict[str, Any]] = []
    skipped = late = 0
    try:
        for partition in sorted(topic.partitions):
            tp = TopicPartition(spec.name, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            start = low
            if windowed and read.since_ms is not None:
                found = consumer.offsets_for_times([TopicPartition(spec.name, partition,
                                                                   read.since_ms - read.lateness_ms)], timeout=10)[0]
                start = found.offset if found.offset >= 0 else high
            consumer.assign([TopicPartition(spec.name, partition, start)])
            last_seen = time.monotonic()
            high_ts: int | None = None
            while True:
                msgs = consumer.consume(5000, 0.2)
                done = False
                for msg in msgs:
                    if msg.error() is not None:
                        if msg.error().code() == -191:  # _PARTITION_EOF
                            done = msg.offset() >= high
                            continue
                        raise BrokerError(f"reading {spec.name}[{partition}] failed: {msg.error()}")
                    if msg.timestamp()[1] > started_ms:  # produced after the replay began: the live flow's
                        done = True
                        break
                    try:
                        record = serde.deserialize(msg.value(), partition, msg.offset())
                        validate(spec, record, msg.timestamp()[1])
                    except DecodeError:
                        skipped += 1
                        continue
                    if windowed:
                        accepted, high_ts = admit(record[spec.time_field], high_ts, read.lateness_ms,
                                                  msg.timestamp()[1])
                        if not accepted:
                            late += 1
                            continue
                    records.append(record)
                if msgs:
                    last_seen = time.monotonic()
                    if on_records is not None:
                        on_records(len(msgs))
                if done or (not msgs and time.monotonic() - last_seen > read.idle_s):
                    break
    finally:
        consumer.close()
    time_field = spec.time_field
    kept = [r for r in records
            if (not windowed or read.since_ms is None or r[time_field] >= read.since_ms)
            and (read.until_ms is None or r[time_field] <= read.until_ms)]
    return kept, late, skipped
