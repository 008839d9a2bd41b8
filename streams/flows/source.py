"""Kafka input for the feature flow: one Bytewax partition per topic-partition, decoding in batches.

The partitions of a worker read through one shared consumer (`SharedConsumer`): one fetch for all of
them instead of one per partition, which is most of what an idle flow costs the broker.

Each poll becomes one `SourceBatch` (decoded events, dead letters), so the rest of the dataflow pays
Bytewax's per-item cost once per batch, not per event; its values are decoded together, in bulk
when they allow it (`TopicSerde.deserialize_many`: the same records as one by one, ~3x faster). A poll
decoded whole in bulk is checked column by column (`_read_columns`), and with `SourceConfig.columnar` its
events stay columns, for `route_columns`. Lateness is decided here, per source partition, in offset order, so the decision is the same on
every run and in replay. The read position is also committed to the `streamml-features` group
(about once a second and at each snapshot), so the ops lag exporter and standard lag tools see the
flow; the recovery store, not the group, is what a restart resumes from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING

from schemas.bulk import records_of
from schemas.errors import RegistryError, ValidationError
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import TopicSpec
from schemas.validation import suspects, validate
from streams.flows import metrics
from streams.kafka.dlq import DeadLetter
from streams.kafka.shared_consumer import SharedConsumer
from streams.windows.lateness import admit, admit_all

LATE = "late"


@dataclass(slots=True)
class SourceBatch:
    """What one poll of one partition yielded."""

    topic: str
    partition: int
    # (offset, record). A poll decoded in bulk keeps only the fields the flow reads of each record (`SourceConfig.fields`;
    # the event log writes `columns`, which hold them all).
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    late: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # decoded but too late
    dead: list[DeadLetter] = field(default_factory=list)
    max_kafka_ts: int = 0  # newest producer timestamp (ms) in the batch, for freshness
    ingest_ms: int = 0
    high: int | None = None  # the partition's event-time high after the batch (windowed topics)
    # The events and late ones, in offset order, as the Arrow columns they were decoded from (a `pa.RecordBatch`),
    # when all were decoded in bulk: the event log writes these instead of converting the records back.
    columns: Any = None
    # With `SourceConfig.columnar`, a poll read column by column leaves `events` empty and keeps them as columns
    # (the fields the flow reads, a `pa.RecordBatch`) and their offsets: `route_columns` reads them for the fold.
    event_columns: Any = None
    event_offsets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SourceConfig:
    """What a source partition needs; plain values so Bytewax can build partitions anywhere."""

    kafka: dict[str, Any]
    registry_url: str
    topics: tuple[TopicSpec, ...]
    windowed_topics: frozenset[str]
    lateness_ms: int
    group_id: str = "streamml-features"
    batch_size: int = 20000
    publish_position_s: float = 1.0
    fetch_wait_ms: int = 10  # fetch.wait.max.ms (STREAMML_FEATURES_FETCH_WAIT_MS)
    fields: Mapping[str, frozenset[str]] = field(default_factory=dict)  # topic -> the fields its events need
    columnar: bool = False  # polls read column by column keep their events as columns (SourceBatch.event_columns)


def _invalid(spec: TopicSpec, record: dict[str, Any], now_ms: int) -> ValidationError | None:
    """The contract rule `record` breaks, if any: `validate`, returned rather than raised."""
    try:
        validate(spec, record, now_ms)
    except ValidationError as exc:
        return exc
    return None


@dataclass(slots=True)
class PollRead:
    """What one poll of a partition came to: the batch, the partition's new event-time high, and where to go on."""

    batch: SourceBatch
    high: int | None
    next_offset: int | None  # after the last message read; None when none was
    retry_at: int | None  # the registry was unreachable for this offset's schema: read again from here


def read_poll(spec: TopicSpec, partition: int, serde: TopicSerde, windowed: bool, lateness_ms: int,
              high: int | None, msgs: Sequence[Any], now_ms: int, fields: frozenset[str] | None = None,
              columnar: bool = False) -> PollRead:
    """Decode one poll's messages together and sort them into events, late events and dead letters, in offset
    order. Messages with a fetch error are skipped (librdkafka retries them); a registry outage stops the
    read at the first value it concerns, to be retried, never dead-lettered. `fields`: what the records of a
    poll decoded in bulk keep (the poll's columns hold every field); None: every field. `columnar`: see
    `SourceBatch.event_columns`."""
    batch = SourceBatch(spec.name, partition, ingest_ms=now_ms)
    time_field = spec.time_field
    last = retry_at = None
    fetched = [msg for msg in msgs if msg.error() is None]
    values = [msg.value() for msg in fetched]
    decoded = serde.deserialize_many(values, report_outage=True)
    if len(decoded.columns) == 1 and len(decoded.columns[0][0]) == len(values):  # every value, in bulk
        columns = decoded.columns[0][1]
        flagged = suspects(spec, columns, now_ms)
        if flagged is not None:
            return _read_columns(spec, partition, batch, fetched, values, columns, flagged, windowed, lateness_ms,
                                 high, now_ms, fields, columnar)
    bulk = len(decoded.columns) == 1 and not decoded.records  # all that decoded, decoded in bulk
    outcomes = decoded.outcomes(len(values), fields if bulk else None)
    logged: list[int] = []  # positions in `values` of the events and late ones
    log, keep = logged.append, batch.events.append  # (the loop runs per record: ~0.85 us of its 2.6 were overhead)
    for position, (msg, value, record) in enumerate(zip(fetched, values, outcomes, strict=True)):
        offset = msg.offset()
        kts = msg.timestamp()[1]
        if type(record) is not dict and isinstance(record, RegistryError):
            retry_at = offset
            break
        last = offset
        if kts > batch.max_kafka_ts:
            batch.max_kafka_ts = kts
        error = _invalid(spec, record, now_ms) if type(record) is dict else record
        if error is not None:
            err = error.located(spec.name, partition, offset)
            batch.dead.append(DeadLetter.from_error(err, msg.key(), value, kts))
            continue
        if windowed:
            ts = record[time_field]
            accepted, new_high = admit(ts, high, lateness_ms, kts)
            if not accepted:
                log(position)
                batch.late.append((offset, record))
                batch.dead.append(DeadLetter(
                    spec.name, partition, offset, msg.key(), value, LATE,
                    f"event time {ts} is {high - ts} ms behind the partition's max {high} "
                    f"(allowed lateness {lateness_ms} ms)", kts))
                continue
            high = new_high
        log(position)
        keep((offset, record))
    batch.high = high if windowed else None
    if logged and bulk:
        indices, columns = decoded.columns[0]
        if len(logged) == len(indices):  # every value decoded in bulk was logged, in order: the columns as they are
            batch.columns = columns
        else:
            row = dict(zip(indices, range(len(indices))))
            batch.columns = columns.take([row[p] for p in logged])
    return PollRead(batch, high, None if last is None else last + 1, retry_at)


def _read_columns(spec: TopicSpec, partition: int, batch: SourceBatch, fetched: list[Any], values: list[Any],
                  columns: pa.RecordBatch, flagged: np.ndarray, windowed: bool, lateness_ms: int, high: int | None,
                  now_ms: int, fields: frozenset[str] | None, columnar: bool) -> PollRead:
    """`read_poll` of a poll whose every value was decoded in bulk, column by column: the rules on the columns
    (`suspects`; the rows they flag are checked one by one) and lateness over the time column (`admit_all`), so
    that only the records kept are made, and the loop per record is gone. The same batch as the loop gives
    (tests/unit/test_flow_source.py)."""
    n = len(fetched)
    stamps = np.fromiter((msg.timestamp()[1] for msg in fetched), np.int64, n)
    batch.max_kafka_ts = max(0, int(stamps.max()))
    trimmed = columns if fields is None else columns.select([name for name in columns.schema.names if name in fields])
    errors: dict[int, ValidationError] = {}
    if flagged.any():
        rows = np.flatnonzero(flagged)
        for row, record in zip(rows.tolist(), records_of(trimmed.take(rows)), strict=True):
            error = _invalid(spec, record, now_ms)
            if error is not None:
                errors[row] = error
    valid = np.ones(n, dtype=bool)
    valid[list(errors)] = False
    if windowed:
        ts = columns.column(spec.time_field).fill_null(0).to_numpy(zero_copy_only=False)
        accepted, before, high = admit_all(ts, stamps, valid, high, lateness_ms)
    else:
        accepted = valid
    late = np.flatnonzero(valid & ~accepted).tolist()
    for row in sorted([*errors, *late]):
        msg, value, offset = fetched[row], values[row], fetched[row].offset()
        error = errors.get(row)
        if error is not None:
            batch.dead.append(DeadLetter.from_error(error.located(spec.name, partition, offset), msg.key(), value,
                                                    int(stamps[row])))
        else:
            t, h = int(ts[row]), int(before[row])
            batch.dead.append(DeadLetter(spec.name, partition, offset, msg.key(), value, LATE,
                                         f"event time {t} is {h - t} ms behind the partition's max {h} "
                                         f"(allowed lateness {lateness_ms} ms)", int(stamps[row])))
    kept = np.flatnonzero(accepted)
    if columnar:
        batch.event_columns = trimmed if len(kept) == n else trimmed.take(kept)
        batch.event_offsets = [fetched[row].offset() for row in kept.tolist()]
    elif len(kept) == n:
        batch.events = list(zip([msg.offset() for msg in fetched], records_of(trimmed), strict=True))
    elif len(kept):
        batch.events = list(zip([fetched[row].offset() for row in kept.tolist()], records_of(trimmed.take(kept)),
                                strict=True))
    if late:
        batch.late = list(zip([fetched[row].offset() for row in late], records_of(trimmed.take(late)), strict=True))
    if errors:
        if len(errors) < n:
            batch.columns = columns.take(np.flatnonzero(valid))
    else:
        batch.columns = columns
    batch.high = high if windowed else None
    return PollRead(batch, high, fetched[-1].offset() + 1, None)


class _Partition(StatefulSourcePartition[SourceBatch, tuple[int, int | None]]):
    def __init__(self, config: SourceConfig, spec: TopicSpec, partition: int, resume: tuple[int, int | None] | None):
        self._config, self._spec, self._partition = config, spec, partition
        self._offset, self._high_ts = resume if resume is not None else (OFFSET_BEGINNING, None)
        self._serde = TopicSerde(spec, RegistryClient.shared(config.registry_url))
        self._serde.bulk_decoder()  # now, not in the middle of the first big poll
        self._windowed = spec.name in config.windowed_topics
        self._reader = SharedConsumer.for_thread({
            **config.kafka,
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": config.fetch_wait_ms,
            "enable.partition.eof": False,
        }, batch_size=config.batch_size)
        self._reader.assign(spec.name, partition, self._offset)
        self._labels = (spec.name, str(partition))
        self._events_in = metrics.EVENTS_IN.labels(spec.name)
        self._position = metrics.POSITION.labels(*self._labels)
        self._high_watermark = metrics.HIGH_WATERMARK.labels(*self._labels)
        self._published_at, self._published = 0.0, -1

    def next_batch(self) -> list[SourceBatch]:
        msgs = self._reader.read(self._spec.name, self._partition)
        high_watermark = self._reader.high_watermark(self._spec.name, self._partition)
        if high_watermark is not None:
            self._high_watermark.set(high_watermark)
        if not msgs:
            self._publish_position(False)
            return []
        read = read_poll(self._spec, self._partition, self._serde, self._windowed, self._config.lateness_ms,
                         self._high_ts, msgs, int(time.time() * 1000), self._config.fields.get(self._spec.name),
                         self._config.columnar)
        batch, high = read.batch, read.high
        self._high_ts = high
        if read.retry_at is not None:
            self._reader.seek(self._spec.name, self._partition, read.retry_at)
            self._offset = read.retry_at
            time.sleep(0.5)
        elif read.next_offset is not None:
            self._offset = read.next_offset
        self._position.set(self._offset)
        self._events_in.inc(len(msgs))
        for letter in batch.dead:
            metrics.DEAD_LETTERS.labels(letter.topic, letter.reason).inc()
        if batch.late:
            metrics.LATE_EVENTS.labels(self._spec.name).inc(len(batch.late))
        if high is not None:
            metrics.EVENT_TIME_WATERMARK.labels(*self._labels).set(high / 1000)
        self._publish_position(False)
        return [batch]

    def _publish_position(self, now: bool) -> None:
        """Commit the read position to the group for lag tools; best effort, the recovery store is the truth."""
        clock = time.monotonic()
        if self._offset < 0 or self._offset == self._published:
            return
        if not now and clock - self._published_at < self._config.publish_position_s:
            return
        self._published_at, self._published = clock, self._offset
        try:
            self._reader.commit(self._spec.name, self._partition, self._offset)
        except Exception:
            pass

    def snapshot(self) -> tuple[int, int | None]:
        self._publish_position(True)
        return self._offset, self._high_ts

    def close(self) -> None:
        self._reader.release(self._spec.name, self._partition)


class EventSource(FixedPartitionedSource[SourceBatch, tuple[int, int | None]]):
    """All partitions of the flow's source topics."""

    def __init__(self, config: SourceConfig):
        self._config = config
        self._specs = {t.name: t for t in config.topics}

    def list_parts(self) -> list[str]:
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(self._config.kafka).list_topics(timeout=10)
        parts = []
        for name in self._specs:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                continue
            parts.extend(f"{name}:{p}" for p in sorted(topic.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int | None] | None) -> _Partition:
        name, partition = for_part.rsplit(":", 1)
        return _Partition(self._config, self._specs[name], int(partition), resume_state)
