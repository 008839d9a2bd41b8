"""Read the Parquet event log back for replay: complete flushes only, in processing order, late rows out.

The live flow applied each partition's events in offset order and skipped late ones (they carry
`_late = true`), so sorting by (partition, offset) and dropping late rows gives the replay exactly
the rows, in the order, the live state saw.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.arrow import arrow_schema
from schemas.errors import ReplayError
from schemas.topics import CDC_TOPIC_NAMES, TopicSpec
from streams.features.definitions import ENTITIES, FEATURES, HOUR_MS
from streams.features.shard import WINDOWED_TOPICS
from streams.replay.frames import as_int
from streams.sinks.parquet import META_FIELDS, flushes, hour_start, is_complete


@dataclass
class LogSlice:
    """What was read for one topic: its rows (processing order, late rows removed) and the files."""

    table: pa.Table
    files: list[Path] = field(default_factory=list)
    late_skipped: int = 0
    invalid_skipped: int = 0  # topic source only: records the live flow dead-lettered


def needed_columns(spec: TopicSpec) -> list[str]:
    """Columns replay needs from a topic's log: ids, time and every field a feature filters or reads."""
    if spec.name in CDC_TOPIC_NAMES:
        return ["op", "ts_ms", "before", "after"]
    names = {spec.time_field}
    names.update(e.id_field(spec.name) for e in ENTITIES if e.id_field(spec.name))
    for f in FEATURES:
        if f.source.name == spec.name:
            names.update(n for n, _ in f.where)
            if f.value_field:
                names.add(f.value_field)
    contract = arrow_schema(spec.schema).names
    return [n for n in contract if n in names]


def complete_pieces(root: Path, topic: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Path]:
    """Pieces of fully written flushes, in hour partitions overlapping [since, until]. A flush still
    being written (some of its k-of-n pieces missing) is left out: the next run picks it up."""
    out = []
    for _, pieces in sorted(flushes(root, topic).items()):
        if not is_complete(pieces):
            continue
        for piece in pieces:
            start = hour_start(piece.path.parent)
            if start is not None and (since_ms is None or start + HOUR_MS > since_ms) and (
                    until_ms is None or start <= until_ms):
                out.append(piece.path)
    return out


def _read_piece(path: Path, columns: list[str], schema: pa.Schema) -> pa.Table:
    try:
        file = pq.ParquetFile(path)
        present = [c for c in columns if c in file.schema_arrow.names]
        table = file.read(columns=present)
    except (OSError, pa.ArrowException) as exc:
        raise ReplayError(f"{path} is not a readable Parquet file ({exc}). Move it aside (replay then skips its "
                          "offset range) or restore it from backup, then re-run") from exc
    for name in columns:  # files written before a field was added read it as null
        if name not in table.column_names:
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(columns).cast(pa.schema([schema.field(c) for c in columns]))


def read_topic_log(root: Path, spec: TopicSpec, since_ms: int | None, until_ms: int | None,
                   on_file: Callable[[Path, int], None] | None = None) -> LogSlice:
    """One topic's rows in [since, until] (event time; `since` only bounds windowed topics, since a
    CDC attribute needs every earlier change), sorted by (partition, offset), deduplicated, not late."""
    windowed = spec.name in WINDOWED_TOPICS
    lower = since_ms if windowed else None
    files = complete_pieces(root, spec.name, lower, until_ms)
    schema = arrow_schema(spec.schema, META_FIELDS)
    columns = needed_columns(spec) + ["_partition", "_offset", "_late"]
    with ThreadPoolExecutor(4) as pool:
        tables = []
        for path, table in zip(files, pool.map(lambda p: _read_piece(p, columns, schema), files)):
            tables.append(table)
            if on_file is not None:
                on_file(path, table.num_rows)
    if not tables:
        return LogSlice(pa.Table.from_batches([], pa.schema([schema.field(c) for c in columns])), files)
    table = pa.concat_tables(tables)
    table = table.take(pc.sort_indices(table, [("_partition", "ascending"), ("_offset", "ascending")]))
    parts, offsets = as_int(table.column("_partition")), as_int(table.column("_offset"))
    if len(parts) > 1:  # a piece copied twice by hand must not count twice
        first = np.ones(len(parts), dtype=bool)
        first[1:] = (parts[1:] != parts[:-1]) | (offsets[1:] != offsets[:-1])
        if not first.all():
            table = table.filter(pa.array(first))
    late = pc.fill_null(table.column("_late"), False)
    late_count = pc.sum(late.cast(pa.int64())).as_py() or 0
    keep = pc.invert(late)
    ts = table.column(spec.time_field)
    ts = ts.cast(pa.int64()) if pa.types.is_timestamp(ts.type) else ts
    if lower is not None:
        keep = pc.and_(keep, pc.greater_equal(ts, lower))
    if until_ms is not None:
        keep = pc.and_(keep, pc.less_equal(ts, until_ms))
    return LogSlice(table.filter(keep), files, late_count)


def read_event_log(root: Path, specs: tuple[TopicSpec, ...], since_ms: int | None, until_ms: int | None,
                   on_file: Callable[[Path, int], None] | None = None) -> dict[str, LogSlice]:
    """Every source topic's slice; refuses a missing log or a range without windowed events."""
    if not root.exists():
        raise ReplayError(f"no event log at {root}: run the feature flow first (`streamml up`), point "
                          "STREAMML_HOME at the right directory, or replay with --source topic")
    out = {spec.name: read_topic_log(root, spec, since_ms, until_ms, on_file) for spec in specs}
    if not any(s.table.num_rows for name, s in out.items() if name in WINDOWED_TOPICS):
        span = log_time_range(root, specs)
        covered = (f"the log covers {iso(span[0])} .. {iso(span[1])}" if span
                   else "the log holds no events yet")
        raise ReplayError(f"no events between {iso(since_ms) if since_ms else 'the beginning'} and "
                          f"{iso(until_ms) if until_ms else 'now'} in {root}; {covered}. Widen --since/--until")
    return out


def log_time_range(root: Path, specs: tuple[TopicSpec, ...]) -> tuple[int, int] | None:
    """First and last hour partition of the windowed topics' log (cheap: directory names only)."""
    hours = [start for spec in specs if spec.name in WINDOWED_TOPICS
             for d in (root / f"topic={spec.name}").glob("date=*/hour=*") if (start := hour_start(d)) is not None]
    return (min(hours), max(hours) + HOUR_MS - 1) if hours else None


def iso(ms: int) -> str:
    """Epoch ms as ISO 8601 UTC, for messages and manifests."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
