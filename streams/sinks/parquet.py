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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.arrow import arrow_schema
from schemas.topics import TopicSpec
from streams.features.definitions import HOUR_MS
from streams.flows import metrics
from streams.flows.source import SourceBatch
from streams.sinks.background import BackgroundWriter, shared_writer

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


def _write_groups(groups: list[tuple[pq.ParquetWriter, pa.Table]]) -> None:
    for writer, table in groups:
        writer.write_table(table)


def _group_writer() -> BackgroundWriter[tuple[pq.ParquetWriter, pa.Table]]:
    """The process's thread for event-log row groups: Parquet encodes and compresses outside the GIL, so the
    flow goes on meanwhile (in the flow's thread, writing them was 6-7% of its catch-up profile)."""
    return shared_writer("event-log-row-groups", lambda: BackgroundWriter(_write_groups, "event-log-writer"))


class _OpenPiece:
    """One event hour of the flush in progress: a Parquet file written under a temporary name, a row group
    whenever enough rows are buffered (on the row-group thread); `close` waits for them, then renames the
    file into place (the atomic step)."""

    def __init__(self, directory: Path, partition: int, schema: pa.Schema):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.tmp = directory / f".p{partition}-open-{uuid.uuid4().hex}.tmp"  # removed on start if left behind
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.buffered: list[pa.Table] = []
        self.rows = 0
        self._written: tuple[BackgroundWriter, int] | None = None  # the last row group handed to the thread

    def add(self, table: pa.Table, group_rows: int) -> None:
        self.buffered.append(table)
        self.rows += table.num_rows
        if self.rows >= group_rows:
            self.write()

    def write(self) -> None:
        if self.buffered:
            groups = _group_writer()
            if self._written is not None and self._written[0] is not groups:  # the thread of earlier groups
                self._written[0].wait(self._written[1])  # stopped on an error: raise it, never leave a gap
            self._written = groups, groups.submit([(self.writer, pa.concat_tables(self.buffered))])
            self.buffered, self.rows = [], 0

    def close(self, name: str) -> None:
        self.write()
        if self._written is not None:
            groups, seq = self._written
            groups.wait(seq)  # re-raises a failed write: the flush fails, nothing is renamed
        self.writer.close()
        os.replace(self.tmp, self.directory / name)


class EventLogWriter:
    """Buffers one partition's events and flushes them as offset-named Parquet pieces.

    Rows are written as they come, one row group per `group_rows` of an event hour, into a temporary file
    per hour; a flush (at every epoch boundary, when the whole flow stands still) writes what is left and
    renames the files into place. Writing it all at the flush stopped the flow for 0.34-0.42 s per epoch at
    8k ev/s here; and the buffer holds no dict per event for the cyclic GC to walk again and again.
    """

    def __init__(self, root: Path, spec: TopicSpec, partition: int, written_upto: int,
                 max_rows: int = 200_000, max_age_s: float = 10.0, group_rows: int = 10_000):
        self.root, self.spec, self.partition = root, spec, partition
        self.written_upto = max(written_upto, committed_position(root, spec.name, partition))
        self.schema = arrow_schema(spec.schema, META_FIELDS)
        self._record_schema = arrow_schema(spec.schema)
        self.max_rows, self.max_age_s, self.group_rows = max_rows, max_age_s, group_rows
        self._pieces: dict[int, _OpenPiece] = {}  # event hour -> its open file
        self._buffered = 0
        self._first = -1
        self._first_at = 0.0
        self._upto = self.written_upto

    def add(self, batch: SourceBatch) -> None:
        if batch.event_columns is not None:  # events kept as columns: `batch.columns` holds them, records are not made
            records: list[tuple[int, Any, bool]] = [(o, None, False) for o in batch.event_offsets]
        else:
            records = [(o, r, False) for o, r in batch.events]
        if batch.late:
            records = sorted(records + [(o, r, True) for o, r in batch.late], key=lambda x: x[0])
        offsets: list[int] = []
        late: list[bool] = []
        kept: list[int] = []  # positions in `records` (and in `batch.columns`) of the rows written
        for position, (offset, _, is_late) in enumerate(records):
            if offset <= self._upto:
                continue  # already written (or buffered): Bytewax re-sends after a restart
            self._upto = offset
            offsets.append(offset)
            late.append(is_late)
            kept.append(position)
        if kept:
            if not self._buffered:
                self._first, self._first_at = offsets[0], time.monotonic()
            if batch.columns is not None:  # the decoded columns themselves: no conversion back from the rows
                columns = batch.columns if len(kept) == len(records) else batch.columns.take(kept)
                table = pa.Table.from_batches([columns]).cast(self._record_schema)
            else:
                table = pa.Table.from_pylist([records[p][1] for p in kept], schema=self._record_schema)
            self._add_table(table, offsets, late, batch)
        if self._buffered >= self.max_rows or (self._buffered and time.monotonic() - self._first_at > self.max_age_s):
            self.flush()

    def _add_table(self, records: pa.Table, offsets: list[int], late: list[bool], batch: SourceBatch) -> None:
        n = records.num_rows
        per_row = {"_offset": offsets, "_late": late}
        per_batch = {"_topic": batch.topic, "_partition": batch.partition, "_ingest_ts": batch.ingest_ms}
        meta = [pa.array(per_row[f.name], f.type) if f.name in per_row else pa.repeat(pa.scalar(per_batch[f.name], f.type), n)
                for f in META_FIELDS]
        table = pa.Table.from_arrays(records.columns + meta, schema=self.schema)
        hours = table.column(self.spec.time_field).cast(pa.int64()).to_numpy() // HOUR_MS
        present = np.unique(hours).tolist()
        for hour in present:
            piece = self._pieces.get(hour)
            if piece is None:
                piece = self._pieces[hour] = _OpenPiece(hour_dir(self.root, self.spec.name, hour * HOUR_MS),
                                                        self.partition, self.schema)
            piece.add(table if len(present) == 1 else table.filter(pa.array(hours == hour)), self.group_rows)
        self._buffered += n

    def flush(self) -> int:
        """Close the open pieces as one offset range [first, last], one file per event hour; returns rows written."""
        if not self._buffered:
            return 0
        first, last, n = self._first, self._upto, len(self._pieces)
        for k, hour in enumerate(sorted(self._pieces), start=1):
            self._pieces[hour].close(f"p{self.partition}-{first:012d}-{last:012d}-{k}of{n}.parquet")
        self.written_upto = last
        rows, self._pieces, self._buffered = self._buffered, {}, 0
        metrics.PARQUET_ROWS.labels("events").inc(rows)
        return rows


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
