"""The sinks' writer thread: a snapshot returns only once the epoch's writes landed, and a failed write stops
the epoch from committing (the snapshot raises) instead of being lost."""

from __future__ import annotations

import threading

import pytest

from streams.sinks.background import BackgroundWriter, ShardedSink


def test_a_snapshot_waits_for_the_writes_of_its_partition_and_keeps_their_order():
    release = threading.Event()
    written: list[tuple[str, int]] = []

    def write(items: list[tuple[str, int]]) -> None:
        release.wait(5)
        written.extend(items)

    sink = ShardedSink(["user:1", "user:0"], ("test", "order"), lambda: BackgroundWriter(write, "test-writer"))
    assert sink.list_parts() == ["user:0", "user:1"] and sink.part_fn("user:1") == 1
    first, second = sink.build_part("s", "user:0", None), sink.build_part("s", "user:1", None)
    first.write_batch([1, 2])
    second.write_batch([3])
    first.write_batch([4])
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (first.snapshot(), done.set()))
    waiter.start()
    assert not done.wait(0.2), "the snapshot returned before its writes landed"
    release.set()
    waiter.join(5)
    assert done.is_set()
    assert written == [("user:0", 1), ("user:0", 2), ("user:1", 3), ("user:0", 4)]


def test_a_failed_write_raises_at_the_next_snapshot():
    def write(items: list[tuple[str, int]]) -> None:
        raise OSError("disk full")

    sink = ShardedSink(["user:0"], ("test", "fail"), lambda: BackgroundWriter(write, "test-writer"))
    part = sink.build_part("s", "user:0", None)
    part.write_batch([1])
    with pytest.raises(OSError, match="disk full"):
        part.snapshot()
    assert sink.build_part("s", "user:0", None)._writer.alive  # a rebuilt flow gets a new writer, not the dead one


def test_close_writes_everything_then_runs_on_close():
    written, closed = [], []
    writer = BackgroundWriter(written.extend, "test-writer", lambda: closed.append(len(written)))
    for n in range(50):
        writer.submit([n])
    writer.close()
    assert written == list(range(50)) and closed == [50]
