"""The Parquet event log: offset-named atomic pieces, resume after the last complete flush, no duplicates."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

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


def test_pieces_hold_each_record_as_sent_in_offset_order_across_batches(tmp_path):
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1, max_age_s=3600)
    batches = [_batch([0, 1, 3], late=[2]), _batch([4], late=[5]), _batch([6, 8], late=[7])]
    for batch in batches:
        writer.add(batch)
    writer.add(_batch([7, 8]))  # re-sent: dropped
    assert writer.flush() == 9
    sent = {o: (r, late) for b in batches for late, part in ((False, b.events), (True, b.late)) for o, r in part}
    for piece in sorted(tmp_path.rglob("*.parquet")):
        rows = pq.read_table(piece).to_pylist()
        assert [r["_offset"] for r in rows] == sorted(r["_offset"] for r in rows)
        for row in rows:
            record, late = sent[row["_offset"]]
            # times read back as datetimes, maps as pairs
            assert {k: row[k] for k in record} == {**record, "ts": row["ts"], "props": row["props"]}
            assert int(row["ts"].timestamp() * 1000) == record["ts"]
            assert (row["_topic"], row["_partition"], row["_late"]) == (CLICKSTREAM.name, 2, late)
            assert int(row["_ingest_ts"].timestamp() * 1000) == T0
    assert sorted(r["_offset"] for r in _rows(tmp_path)) == list(range(9))


def test_rows_written_before_a_crash_are_removed_on_start_and_written_once(tmp_path):
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1, max_age_s=3600, group_rows=2)
    writer.add(_batch([0, 1, 2], late=[3]))
    writer.add(_batch([4, 5]))  # row groups already in the open (temporary) files; then the process dies
    assert list(tmp_path.rglob("*.parquet")) == [] and len(list(tmp_path.rglob(".p2-*.tmp"))) == 2
    del writer
    again = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1, group_rows=2)
    assert list(tmp_path.rglob("*.tmp")) == []
    again.add(_batch([0, 1, 2], late=[3]))
    again.add(_batch([4, 5]))
    assert again.flush() == 6
    assert sorted(r["_offset"] for r in _rows(tmp_path)) == list(range(6))
    assert max(pq.ParquetFile(p).num_row_groups for p in tmp_path.rglob("*.parquet")) > 1


def test_a_row_group_that_fails_on_the_writer_thread_fails_the_flush_and_nothing_is_renamed(tmp_path, monkeypatch):
    """Row groups are written on a thread of their own: its error surfaces at the flush, which then commits
    nothing (the flow restarts from the last complete flush, as after a failed write in its own thread)."""
    from streams.sinks import background, parquet

    def full(groups):
        raise OSError("No space left on device")

    monkeypatch.setattr(parquet, "_write_groups", full)
    monkeypatch.delitem(background._SHARED, "event-log-row-groups", raising=False)  # a thread with `full`
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1, group_rows=2)
    writer.add(_batch([0, 1, 2]))
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    assert not list(tmp_path.rglob("*.parquet")) and committed_position(tmp_path, CLICKSTREAM.name, 2) == -1
    monkeypatch.undo()
    writer = EventLogWriter(tmp_path, CLICKSTREAM, 2, -1)  # after the restart: written once, complete
    writer.add(_batch([0, 1, 2]))
    assert writer.flush() == 3 and sorted(r["_offset"] for r in _rows(tmp_path)) == [0, 1, 2]
