"""The feature flow (Bytewax): Kafka -> decode -> per-shard feature state -> Redis + Parquet + DLQ.

Wiring only. Every item travelling between steps is a micro-batch (one poll of one partition, or
its share for one shard), which is what keeps Bytewax's per-item overhead off the per-event path.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from math import ceil
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from confluent_kafka.admin import AdminClient

from schemas.errors import RecoveryError
from schemas.topics import TopicSpec
from schemas.validation import fields_read
from streams.features.definitions import ENTITIES, source_topics
from streams.features.keys import namespace_prefix
from streams.features.shard import (
    ENGINE,
    EVENT_FIELDS,
    PLANS,
    SEAL_CHUNK,
    WINDOWED_TOPICS,
    EntityWrites,
    FeatureLogWindow,
    ShardInput,
    ShardState,
    route,
    route_columns,
)
from streams.flows import metrics
from streams.flows.source import EventSource, SourceBatch, SourceConfig
from streams.flows.state_store import SegmentStore, is_manifest
from streams.runtime.lifecycle import freeze_survivors
from streams.settings import FeatureFlowSettings
from streams.sinks.dead_letters import DeadLetterSink
from streams.sinks.feature_log import FeatureLogSink
from streams.sinks.parquet import EventLogSink
from streams.sinks.redis import RedisFeatureSink

# In the last second before a snapshot is due, entities changed are pickled without waiting to be quiet, paced
# to be done EARLY_S before it (the first snapshot of an epoch came up to 0.4 s before the one before + epoch).
PRE_EPOCH_S, EARLY_S = 1.0, 0.4


class EpochClock:
    """When the process's next snapshot is due: Bytewax snapshots every changed key at each epoch's end, so the
    first snapshot seen marks the epoch, and the next one is expected `epoch_s` later."""

    def __init__(self, epoch_s: float):
        self.epoch_s = epoch_s
        self.last: float | None = None  # `time.monotonic()` at the last epoch's first snapshot

    def snapshotted(self, now: float) -> None:
        if self.last is None or now - self.last > self.epoch_s / 2:
            self.last = now

    def until_next(self, now: float) -> float | None:
        """Seconds until the next snapshot is due (0 while it is late), None before the first one."""
        if self.last is None:
            return None
        elapsed = now - self.last
        return max(0.0, self.epoch_s - elapsed) if elapsed < 1.5 * self.epoch_s else self.epoch_s - elapsed % self.epoch_s


class ShardLogic(StatefulBatchLogic[ShardInput, EntityWrites | FeatureLogWindow, tuple[str, bytes]]):
    """Bytewax state of one (entity, shard) key: a `ShardState` fed whole micro-batches.

    Emits the new values of the entities each batch touched (for Redis) and the feature-log windows
    that closed; a shard that goes quiet closes its open windows after `idle_s` of wall time.
    """

    def __init__(self, period_ms: int, lateness_ms: int, idle_s: float, sources: Mapping[str, frozenset[tuple[str, int]]],
                 state_dir: Path | None, clock: EpochClock, resume: tuple[str, bytes] | None):
        self._clock = clock
        self._prev = time.monotonic()
        self._options = {"period_ms": period_ms, "lateness_ms": lateness_ms, "mark_ttl_s": idle_s}
        self._sources = sources  # entity -> the windowed partitions feeding it (they hold its log windows back)
        self._state_dir = state_dir  # segment files of each shard's state (None: whole snapshots to Bytewax)
        self._store: SegmentStore | None = None
        self._idle = timedelta(seconds=idle_s)
        self._last_batch = datetime.now(UTC)
        self._state: ShardState | None = None
        if resume is not None:
            entity, data = resume
            options = {"sources": sources.get(entity, frozenset()), **self._options}
            snapshot = pickle.loads(data)
            if is_manifest(snapshot):
                self._store = SegmentStore(self._require_dir(), snapshot[1])
                self._state = ShardState.from_parts(entity, *self._store.load(snapshot), **options)
            else:  # a whole snapshot (recovery without segments, or an earlier version)
                self._state = ShardState.from_parts(entity, *snapshot, **options)

    def _require_dir(self) -> Path:
        if self._state_dir is None:
            raise RecoveryError("this recovery store names state segments but the flow runs without them; "
                                "run it with recovery on (STREAMML_FEATURES_RECOVERY=true)")
        return self._state_dir

    def on_batch(self, values: list[ShardInput]) -> tuple[list, bool]:
        if self._store is None and self._state_dir is not None:  # first batch since a start without segments
            self._store = SegmentStore(self._state_dir, values[0].shard)
            self._store.clean()
        if self._state is None:
            entity = values[0].entity
            self._state = ShardState(entity, sources=self._sources.get(entity, frozenset()), **self._options)
        self._last_batch = datetime.now(UTC)
        self._state.clock = now = time.monotonic()
        writes = self._state.apply(values)
        # Spread the next snapshot's pickling over the batches (at most one entity per event, among those
        # quiet for a second), so the epoch boundary, when the whole flow stands still, finds little left
        # (0.46 s at 10k ev/s before). In the last second before it, every entity changed before this batch,
        # paced to be done by then (the entities changed within a second were 0.25-0.3 s of a 0.6 s pause).
        limit, changed_before = sum(len(v) for v in values), now - 1.0
        due = self._clock.until_next(now)
        if due is not None and due < PRE_EPOCH_S:
            limit = max(limit, ceil(self._state.dirty * min(1.0, (now - self._prev) / max(due - EARLY_S, 0.01))))
            changed_before = now
            self._state.seal(SEAL_CHUNK // 16)
        self._state.freeze_some(limit, changed_before)
        self._prev = now
        return [writes, *self._state.close_windows()], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._state is None or not self._state.pending:
            return None
        return self._last_batch + self._idle

    def on_notify(self) -> tuple[list, bool]:
        assert self._state is not None
        return list(self._state.close_windows(force=True)), StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple[str, bytes]:
        assert self._state is not None
        started = time.perf_counter()
        self._clock.snapshotted(time.monotonic())
        data = self._state.snapshot() if self._store is None else self._store.save(self._state)
        snapshot = self._state.entity, data
        freeze_survivors()  # at each epoch: the GC stops walking the state that survived it
        metrics.SNAPSHOT_SECONDS.labels(self._state.entity).observe(time.perf_counter() - started)
        segment = self._store.last_bytes if self._store is not None else 0
        metrics.SNAPSHOT_BYTES.labels(self._state.entity).inc(len(data) + segment)
        return snapshot


@dataclass(frozen=True)
class FlowConfig:
    """Plain values the dataflow is built from (derived from `FeatureFlowSettings`)."""

    kafka: dict[str, Any]
    registry_url: str
    redis_url: str
    data_dir: Path
    shards: int
    lateness_ms: int
    batch_size: int
    namespace: str | None = None  # key prefix; None = follow the active namespace (and rebuilds)
    topics: tuple[TopicSpec, ...] = ()
    log_period_ms: int = 300_000
    log_idle_s: float = 30.0
    fetch_wait_ms: int = 10
    state_dir: Path | None = None  # each shard's state as segment files (with recovery; see state_store.py)
    epoch_s: float = 10.0  # Bytewax's epoch interval (when snapshots come)

    @classmethod
    def from_settings(cls, s: FeatureFlowSettings) -> FlowConfig:
        return cls(s.kafka_config(), s.schema_registry_url, s.redis_url, s.data_dir, s.features_shards,
                   int(s.features_lateness_s * 1000), s.features_batch_size,
                   namespace_prefix(s.features_namespace) if s.features_namespace else None,
                   source_topics(), int(s.features_log_period_s * 1000), s.features_log_idle_s,
                   s.features_fetch_wait_ms, s.recovery_dir / "state" if s.features_recovery else None,
                   s.features_epoch_s)


def source_fields(topics: tuple[TopicSpec, ...]) -> dict[str, frozenset[str]]:
    """Per source topic, the fields the flow reads of its events (validation, routing, feature state): what the
    source keeps of records decoded in bulk. Topics whose events something reads whole are left out."""
    out = {}
    for spec in topics:
        rules, state = fields_read(spec), EVENT_FIELDS.get(spec.name)
        if rules is not None and state is not None:
            out[spec.name] = rules | state
    return out


def route_batch(batch: SourceBatch, shards: int) -> list[tuple[str, ShardInput]]:
    """The flow's keyed exchange of one source batch: its events per (entity, shard), read from the columns when
    the source kept them so (`SourceConfig.columnar`)."""
    if batch.event_columns is not None:
        return route_columns(batch.topic, batch.event_columns, batch.max_kafka_ts, shards, batch.partition, batch.high)
    return route(batch.topic, batch.events, batch.max_kafka_ts, shards, batch.partition, batch.high)


def build_flow(cfg: FlowConfig) -> Dataflow:
    topics = cfg.topics or source_topics()
    metadata = AdminClient(cfg.kafka).list_topics(timeout=10)
    parts = [f"{t.name}:{p}" for t in topics if t.name in metadata.topics for p in metadata.topics[t.name].partitions]
    source = EventSource(SourceConfig(cfg.kafka, cfg.registry_url, topics, WINDOWED_TOPICS, cfg.lateness_ms,
                                      batch_size=cfg.batch_size, fetch_wait_ms=cfg.fetch_wait_ms,
                                      fields=source_fields(topics), columnar=ENGINE == "native"))
    shards = cfg.shards

    flow = Dataflow("streamml-features")
    batches = op.input("kafka", flow, source)

    dead = op.flat_map("dead_letters", batches, lambda b: b.dead)
    op.output("dlq", dead, DeadLetterSink(cfg.kafka))

    by_partition = op.map("by_partition", batches, lambda b: (f"{b.topic}:{b.partition}", b))
    op.output("event_log", by_partition, EventLogSink(cfg.data_dir / "events", {t.name: t for t in topics}, parts))

    routed = op.flat_map("route", batches, partial(route_batch, shards=shards))
    sources = {name: frozenset((t, p) for t in plan.windowed_sources if t in metadata.topics
                               for p in metadata.topics[t].partitions) for name, plan in PLANS.items()}
    logic = partial(ShardLogic, cfg.log_period_ms, cfg.lateness_ms, cfg.log_idle_s, sources, cfg.state_dir,
                    EpochClock(cfg.epoch_s))
    outputs = op.stateful_batch("features", routed, logic)
    split = op.branch("split", outputs, lambda kv: isinstance(kv[1], EntityWrites))
    shard_keys = [f"{e.name}:{i}" for e in ENTITIES for i in range(shards)]
    op.output("redis", split.trues, RedisFeatureSink(cfg.redis_url, shard_keys, cfg.namespace))
    op.output("feature_log", split.falses, FeatureLogSink(cfg.data_dir / "features", shard_keys))
    return flow


def epoch(settings: FeatureFlowSettings) -> timedelta:
    return timedelta(seconds=settings.features_epoch_s)
