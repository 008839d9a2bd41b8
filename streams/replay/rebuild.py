"""`streamml replay`: rebuild online features (or the feature log) from the event log or the topics.

Read (Parquet log or topics) -> compute every entity's values column-wise with the live flow's
definitions and tile math (`engine`) -> write them into a fresh namespace with the same
compare-and-set writer the live flow uses. Serving is untouched until `promote`; a failed replay
marks its namespace failed and never becomes promotable.
"""

from __future__ import annotations

import contextlib
import heapq
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import redis

from schemas.errors import ReplayError
from schemas.topics import topic_spec
from streams.features import namespaces
from streams.features.definitions import source_topics
from streams.features.keys import namespace_prefix
from streams.features.shard import PLANS, WINDOWED_TOPICS, EntityWrites, ShardState, route
from streams.replay.eventlog import LogSlice, read_event_log
from streams.replay.frames import entity_rows, latest_values, plain
from streams.replay.topic import TopicRead, read_topic
from streams.settings import FeatureFlowSettings
from streams.sinks.background import BackgroundWriter
from streams.sinks.feature_log import write_window
from streams.sinks.redis import FeatureWriter

WRITE_CHUNK = 5000


class Progress(Protocol):
    """What the command line shows: one phase at a time with a known or unknown total."""

    def phase(self, name: str, total: int | None, unit: str) -> None: ...

    def advance(self, n: int) -> None: ...


class NoProgress:
    def phase(self, name: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


@dataclass(frozen=True)
class ReplayRequest:
    source: str = "parquet"  # parquet | topic
    target: str = "redis"  # redis | parquet
    namespace: str = ""  # '' = a new timestamped name
    since_ms: int | None = None
    until_ms: int | None = None
    dry_run: bool = False
    overwrite: bool = False


@dataclass
class ReplayReport:
    namespace: str
    source: str
    target: str
    dry_run: bool
    events: int = 0
    late_skipped: int = 0
    invalid_skipped: int = 0
    files: int = 0
    entities: dict[str, int] = field(default_factory=dict)
    written: int = 0
    output: str = ""
    handover_wait_s: float = 0.0
    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.read_s + self.compute_s + self.write_s

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s, 1)}


def default_namespace() -> str:
    return datetime.now(UTC).strftime("replay-%Y%m%d-%H%M%S")


def load_events(settings: FeatureFlowSettings, req: ReplayRequest, progress: Progress) -> dict[str, LogSlice]:
    """Every source topic's accepted rows in processing order, from the log or the topics."""
    specs = source_topics()
    if req.source == "parquet":
        progress.phase("read event log", None, "files")
        return read_event_log(settings.data_dir / "events", specs, req.since_ms, req.until_ms,
                              lambda _path, _rows: progress.advance(1))
    if req.source == "topic":
        progress.phase("read topics", None, "records")
        read = TopicRead(settings.kafka_config(), settings.schema_registry_url, int(settings.features_lateness_s * 1000),
                         req.since_ms, req.until_ms)
        out = {spec.name: read_topic(read, spec, progress.advance) for spec in specs}
        if not any(s.table.num_rows for name, s in out.items() if name in WINDOWED_TOPICS):
            raise ReplayError("the topics hold no events in the requested range; widen --since/--until")
        return out
    raise ReplayError(f"unknown --source {req.source!r}: use parquet or topic")


def replay(settings: FeatureFlowSettings, req: ReplayRequest, progress: Progress | None = None) -> ReplayReport:
    """Run one replay as asked; see the module doc."""
    try:
        return _replay(settings, req, progress)
    except redis.RedisError as exc:
        raise ReplayError(f"Redis at {settings.redis_url} failed during the replay ({exc}); start it or fix "
                          "STREAMML_REDIS_URL, then re-run with --overwrite") from exc


def _replay(settings: FeatureFlowSettings, req: ReplayRequest, progress: Progress | None) -> ReplayReport:
    progress = progress or NoProgress()
    if req.target not in ("redis", "parquet"):
        raise ReplayError(f"unknown --target {req.target!r}: use redis or parquet")
    name = namespaces.check_name(req.namespace or default_namespace())
    report = ReplayReport(name, req.source, req.target, req.dry_run)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10) if req.target == "redis" else None
    out_dir = settings.data_dir / "replay" / name / "features"
    if not req.dry_run:
        if client is not None:
            follow = req.until_ms is None  # a rebuild up to now keeps receiving live updates until promoted
            namespaces.begin(client, name, {"source": req.source, "since_ms": req.since_ms or "",
                                            "until_ms": req.until_ms or ""}, overwrite=req.overwrite, follow=follow)
            if follow:  # let the live flow pick the namespace up and flush what it wrote before to the log
                report.handover_wait_s = settings.features_epoch_s + 2.0
                time.sleep(report.handover_wait_s)
        elif out_dir.exists() and any(out_dir.iterdir()):
            if not req.overwrite:
                raise ReplayError(f"{out_dir} already holds a rebuilt feature log; choose another --namespace or "
                                  "pass --overwrite")
            shutil.rmtree(out_dir)
    try:
        started = time.perf_counter()
        slices = load_events(settings, req, progress)
        report.read_s = time.perf_counter() - started
        report.files = sum(len(s.files) for s in slices.values())
        report.late_skipped = sum(s.late_skipped for s in slices.values())
        report.invalid_skipped = sum(s.invalid_skipped for s in slices.values())
        tables = {topic: s.table for topic, s in slices.items()}
        report.events = sum(t.num_rows for t in tables.values())
        if req.target == "redis":
            _rebuild_online(None if req.dry_run else settings.redis_url, name, tables, report, progress)
        else:
            _rebuild_feature_log(out_dir, tables, report, progress, dry_run=req.dry_run)
    except BaseException as exc:
        if client is not None and not req.dry_run:
            with contextlib.suppress(redis.RedisError):  # Redis itself may be what failed
                namespaces.fail(client, name, f"{type(exc).__name__}: {exc}")
        raise
    if client is not None and not req.dry_run:
        namespaces.finish(client, name, {"events": report.events, "keys": report.written,
                                         **{f"entities_{k}": v for k, v in report.entities.items()}})
    return report


def _rebuild_online(redis_url: str | None, name: str, tables: dict[str, pa.Table], report: ReplayReport,
                    progress: Progress) -> None:
    """Every entity's latest values, written into namespace `name` (not written when `redis_url` is None)."""
    started = time.perf_counter()
    results = []
    progress.phase("compute features", len(PLANS), "entity types")
    for entity, plan in PLANS.items():
        ids, values = latest_values(plan, entity_rows(plan, tables))
        rows = values.rows(ids)
        report.entities[entity] = len(rows)
        results.append((entity, rows))
        progress.advance(1)
    report.compute_s = time.perf_counter() - started
    report.output = f"redis namespace {name!r} (keys ns:{namespace_prefix(name)}:feat:…)"
    if redis_url is None:
        return
    started = time.perf_counter()
    # Two connections: one packs the next chunk while Redis runs the last one (about 1.4x one).
    targets = [FeatureWriter(redis_url, namespace_prefix(name), max_retry_s=30) for _ in range(2)]
    writers = [BackgroundWriter(t.write, "redis-writer", t.close) for t in targets]
    progress.phase("write redis", sum(len(rows) for _, rows in results), "keys")
    pending: list[tuple[BackgroundWriter, int, int]] = []
    try:
        chunks = [(entity, rows[i:i + WRITE_CHUNK]) for entity, rows in results for i in range(0, len(rows), WRITE_CHUNK)]
        for k, (entity, chunk) in enumerate(chunks):
            writer = writers[k % 2]
            pending.append((writer, writer.submit([EntityWrites(entity, chunk)]), len(chunk)))
            while len(pending) > 4 or (k == len(chunks) - 1 and pending):
                done, seq, size = pending.pop(0)
                done.wait(seq)
                progress.advance(size)
    finally:
        for writer in writers:
            writer.close()
    report.written = sum(len(rows) for _, rows in results)
    report.write_s = time.perf_counter() - started


def _rebuild_feature_log(out_dir: Path, tables: dict[str, pa.Table], report: ReplayReport, progress: Progress,
                         *, dry_run: bool) -> None:
    """The feature log (closed windows) recomputed with the live flow's own `ShardState`, event by event."""
    started = time.perf_counter()
    states = {entity: ShardState(entity) for entity in PLANS}
    progress.phase("recompute feature log", report.events, "events")
    for topic, batch in _interleaved(tables):
        for _, part in route(topic, batch, 0, 1):
            states[part.entity].apply([part])
        progress.advance(len(batch))
    windows = [w for state in states.values() for w in state.close_windows(force=True)]
    for entity, state in states.items():
        report.entities[entity] = len(state.states)
    report.compute_s = time.perf_counter() - started
    report.output = str(out_dir)
    if dry_run:
        return
    started = time.perf_counter()
    progress.phase("write feature log", len(windows), "windows")
    for window in windows:
        write_window(out_dir, "replay", window)
        report.written += len(window.rows)
        progress.advance(1)
    report.write_s = time.perf_counter() - started


def _interleaved(tables: dict[str, pa.Table], batch: int = 2000):
    """(topic, [(index, record)…]) batches of all topics interleaved roughly by event time (heap merge
    of their heads); each topic keeps its processing order, which is what the state depends on."""
    def rows(topic: str, table: pa.Table):
        time_field = topic_spec(topic).time_field
        for i, record in enumerate(plain(table).to_pylist()):
            yield record[time_field], topic, i, record

    merged = heapq.merge(*(rows(t, tab) for t, tab in tables.items()), key=lambda r: r[0])
    current, buf = None, []
    for _, topic, i, record in merged:
        if topic != current or len(buf) >= batch:
            if buf:
                yield current, buf
            current, buf = topic, []
        buf.append((i, record))
    if buf:
        yield current, buf
