"""The Parquet event log: offset-named atomic pieces, resume after the last complete flush, no duplicates."""

from __future__ import annotations

import pyarrow.parquet as pq

from schemas.topics import CLICKSTREAM
from streams.flows.source import SourceBatch
from streams.sinks.parquet import EventLogWriter, committed_position

HOUR = 3_600_000
T0 = 1_763_800_000_000 // HOUR * HOUR


def _event(n: int, ts: int) -> dict:
    return {"event_id": f"e{n}", "user_id": "u", "session_id": "s", "event_type": "click", "item_id": "i",
            "price": None, "ts": ts, "page": "/", "referrer": None, "device": "mobile", "country": "DE", "props": {}}


def _batch(offsets, ts=T0, late=()) -> SourceBatch:
    return SourceBatch(CLICKSTREAM.name, 2, events=[(o, _event(o, ts + o)) for o in offsets],
                       late=[(o, _event(o, ts - 10 * HOUR)) for o in late], ingest_ms=T0)


def _rows(root):
    files = sorted(root.rglob("*.parquet"))
    return pq.ParquetDataset([str(f) for f in files]).read().to_pylist() if files else []


def test_flush_writes_one_piece_per_event_hour_named_by_offsets(tmp_path):
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1)
    writer.add(_batch([0, 1, 2], late=[3]))
    assert writer.flush() == 4
    names = sorted(p.name for p in tmp_path.rglob("*.parquet"))
    assert names == ["p2-000000000000-000000000003-1of2.parquet", "p2-000000000000-000000000003-2of2.parquet"]
    rows = _rows(tmp_path)
    assert sorted(r["_offset"] for r in rows) == [0, 1, 2, 3]
    assert [r["_late"] for r in sorted(rows, key=lambda r: r["_offset"])] == [False, False, False, True]
    assert committed_position(tmp_path, CLICKSTREAM.name, 2) == 3


def test_restart_drops_rows_already_written(tmp_path):
    first = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1)
    first.add(_batch(range(0, 10)))
    first.flush()
    # Bytewax resumes from an older snapshot and re-sends offsets 5..14.
    second = EventLogWriter(tmp_path, CLICKSTREAM, 2, written_upto=4)
    second.add(_batch(range(5, 15)))
    second.flush()
    offsets = sorted(r["_offset"] for r in _rows(tmp_path))
    assert offsets == list(range(15))


def test_an_incomplete_flush_is_removed_and_rewritten(tmp_path):
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1)
    writer.add(_batch([0, 1], late=[2]))
    writer.flush()
    # Simulate a crash between the two pieces of a flush: drop the second piece.
    piece = next(p for p in tmp_path.rglob("*2of2.parquet"))
    piece.unlink()
    assert committed_position(tmp_path, CLICKSTREAM.name, 2) == -1
    assert list(tmp_path.rglob("*.parquet")) == []
    again = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1)
    again.add(_batch([0, 1], late=[2]))
    again.flush()
    assert sorted(r["_offset"] for r in _rows(tmp_path)) == [0, 1, 2]


def test_log_is_readable_without_project_code(tmp_path):
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1)
    writer.add(_batch([0]))
    writer.flush()
    table = pq.read_table(str(tmp_path / f"topic={CLICKSTREAM.name}"))
    assert {"event_id", "ts", "_offset", "_ingest_ts", "_late", "date", "hour"} <= set(table.column_names)
