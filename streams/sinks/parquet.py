"""The offline event log: decoded events appended to Hive-partitioned Parquet, exactly once.

Layout: `events/topic=T/date=YYYY-MM-DD/hour=HH/p{partition}-{first}-{last}-{k}of{n}.parquet` by event
time. One flush writes the buffered offset range [first, last] of one partition as n pieces (one
per event hour), each atomically (temp file + rename). On start a partition resumes after the
highest range whose pieces are all present (incomplete flushes are removed), so rows re-sent by
Bytewax after a crash are dropped instead of written twice. Readable with plain pyarrow/DuckDB.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.arrow import arrow_schema
from schemas.topics import TopicSpec
from streams.features.definitions import HOUR_MS
from streams.flows import metrics
from streams.flows.source import SourceBatch

META_FIELDS = [
    pa.field("_topic", pa.string()),
    pa.field("_partition", pa.int32()),
    pa.field("_offset", pa.int64()),
    pa.field("_ingest_ts", pa.timestamp("ms", tz="UTC")),
    pa.field("_late", pa.bool_()),
]
_PIECE = re.compile(r"^p(?P<p>\d+)-(?P<first>\d+)-(?P<last>\d+)-(?P<k>\d+)of(?P<n>\d+)\.parquet$")
_HOUR_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")


def hour_partition(ts_ms: int) -> str:
    """The Hive partition path of an event time, shared by both Parquet logs: `date=YYYY-MM-DD/hour=HH`."""
    when = datetime.fromtimestamp(ts_ms // HOUR_MS * HOUR_MS / 1000, tz=UTC)
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def hour_dir(root: Path, topic: str, ts_ms: int) -> Path:
    return root / f"topic={topic}" / hour_partition(ts_ms)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write then rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Piece:
    """One file of a flush: offsets [first, last] of a partition, piece k of n (one per event hour)."""

    path: Path
    partition: int
    first: int
    last: int
    k: int
    n: int


def flushes(root: Path, topic: str, partition: int | None = None) -> dict[tuple[int, int, int], list[Piece]]:
    """A topic's pieces grouped by flush, (partition, first, last) -> pieces (one partition if given)."""
    out: dict[tuple[int, int, int], list[Piece]] = defaultdict(list)
    pattern = f"date=*/hour=*/p{'' if partition is None else partition}*.parquet"
    for path in (root / f"topic={topic}").glob(pattern):
        m = _PIECE.match(path.name)
        if m and (partition is None or int(m["p"]) == partition):
            piece = Piece(path, int(m["p"]), int(m["first"]), int(m["last"]), int(m["k"]), int(m["n"]))
            out[(piece.partition, piece.first, piece.last)].append(piece)
    return out


def is_complete(pieces: list[Piece]) -> bool:
    """Every piece k of n of one flush is on disk (a crash mid-flush leaves some out)."""
    return {p.k for p in pieces} == set(range(1, pieces[0].n + 1))


def hour_start(directory: Path) -> int | None:
    """Epoch ms of an `…/date=YYYY-MM-DD/hour=HH` directory (the inverse of `hour_partition`)."""
    m = _HOUR_DIR.search(directory.as_posix())
    if not m:
        return None
    return int(datetime.strptime(f"{m[1]} {m[2]}", "%Y-%m-%d %H").replace(tzinfo=UTC).timestamp() * 1000)


def committed_position(root: Path, topic: str, partition: int) -> int:
    """Highest offset fully written for a partition (-1 if none); removes pieces of incomplete flushes."""
    best = -1
    for (_, _, last), pieces in flushes(root, topic, partition).items():
        if is_complete(pieces):
            best = max(best, last)
        else:
            for piece in pieces:
                piece.path.unlink(missing_ok=True)
    for stray in (root / f"topic={topic}").glob(f"date=*/hour=*/.p{partition}-*.tmp"):
        stray.unlink(missing_ok=True)
    return best


class EventLogWriter:
    """Buffers one partition's events and flushes them as offset-named Parquet pieces."""

    def __init__(self, root: Path, spec: TopicSpec, partition: int, written_upto: int,
                 max_rows: int = 200_000, max_age_s: float = 10.0):
        self.root, self.spec, self.partition = root, spec, partition
        self.written_upto = max(written_upto, committed_position(root, spec.name, partition))
        self.schema = arrow_schema(spec.schema, META_FIELDS)
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self._rows: list[dict[str, Any]] = []
        self._first_at = 0.0
        self._upto = self.written_upto

    def add(self, batch: SourceBatch) -> None:
        records = [(o, r, False) for o, r in batch.events]
        if batch.late:
            records = sorted(records + [(o, r, True) for o, r in batch.late], key=lambda x: x[0])
        for offset, record, late in records:
            if offset <= self._upto:
                continue  # already written (or buffered): Bytewax re-sends after a restart
            self._upto = offset
            if not self._rows:
                self._first_at = time.monotonic()
            self._rows.append({**record, "_topic": batch.topic, "_partition": batch.partition,
                               "_offset": offset, "_ingest_ts": batch.ingest_ms, "_late": late})
        if len(self._rows) >= self.max_rows or (self._rows and time.monotonic() - self._first_at > self.max_age_s):
            self.flush()

    def flush(self) -> int:
        """Write the buffer as one offset range; returns rows written."""
        if not self._rows:
            return 0
        rows = sorted(self._rows, key=lambda r: r["_offset"])
        first, last = rows[0]["_offset"], rows[-1]["_offset"]
        by_hour: dict[int, list[dict[str, Any]]] = defaultdict(list)
        time_field = self.spec.time_field
        for row in rows:
            by_hour[row[time_field] // HOUR_MS].append(row)
        n = len(by_hour)
        for k, (hour, part) in enumerate(sorted(by_hour.items()), start=1):
            directory = hour_dir(self.root, self.spec.name, hour * HOUR_MS)
            name = f"p{self.partition}-{first:012d}-{last:012d}-{k}of{n}.parquet"
            write_atomic(pa.Table.from_pylist(part, schema=self.schema), directory / name)
        self.written_upto = last
        self._rows = []
        metrics.PARQUET_ROWS.labels("events").inc(len(rows))
        return len(rows)


class _Partition(StatefulSinkPartition[SourceBatch, int]):
    def __init__(self, writer: EventLogWriter):
        self._writer = writer

    def write_batch(self, items: list[SourceBatch]) -> None:
        for batch in items:
            self._writer.add(batch)

    def snapshot(self) -> int:
        self._writer.flush()  # epoch boundary: what the recovery store remembers is on disk
        return self._writer.written_upto

    def close(self) -> None:
        self._writer.flush()


class EventLogSink(FixedPartitionedSink[SourceBatch, int]):
    """Bytewax sink with one partition per source topic-partition (`topic:partition` keys)."""

    def __init__(self, root: Path, specs: dict[str, TopicSpec], parts: list[str]):
        self._root, self._specs, self._parts = root, specs, sorted(parts)

    def list_parts(self) -> list[str]:
        return self._parts

    def part_fn(self, item_key: str) -> int:
        return self._parts.index(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        topic, partition = for_part.rsplit(":", 1)
        writer = EventLogWriter(self._root, self._specs[topic], int(partition),
                                -1 if resume_state is None else resume_state)
        return _Partition(writer)
