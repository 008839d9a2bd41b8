"""The recovery store drops what a crashed run wrote past the resume epoch (real Bytewax runs, no services).

The crash itself is the one step written by hand: a run killed after snapshotting an epoch and before its
frontier passed it leaves exactly an `exs` row and `snaps` rows at that epoch, which is what is inserted.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, cluster_main

from streams.flows.recovery import discard_uncommitted, open_store, resume_epoch

STEP = "count.sum.stateful_flat_map.stateful.stateful_batch"  # where stateful_map keeps its state


def _run(store: Path, items: list, clean: bool = True, workers: int = 1) -> list[tuple[str, int]]:
    """One execution of a keyed running sum over `items` (a resumed one reads only the items after the
    ones earlier runs read); each item its own epoch. Returns what it emitted."""
    flow = Dataflow("count")
    counts = op.stateful_map("sum", op.input("inp", flow, TestingSource(items)),
                             lambda total, value: ((total or 0) + value,) * 2)
    out: list[tuple[str, int]] = []
    op.output("out", counts, TestingSink(out))
    config = open_store(store, 2) if clean else RecoveryConfig(str(store))
    cluster_main(flow, [], 0, epoch_interval=timedelta(0), recovery_config=config, worker_count_per_proc=workers)
    return out


def _parts(store: Path) -> list[Path]:
    return sorted(store.glob("part-*.sqlite3"))


def _crash_after_snapshot(store: Path, key: str, like: str) -> int:
    """Leave the store as a run does that was killed after snapshotting `key` (with `like`'s state) in the
    epoch it resumed at, before its frontier moved: its `exs` row and that snapshot. Returns the epoch."""
    epoch = resume_epoch(_parts(store))
    assert epoch is not None
    blobs = [row for part in _parts(store) for row in _query(part, "SELECT ser_change FROM snaps WHERE "
                                                               "step_id = ? AND state_key = ?", STEP, like)]
    ex_num, workers = max(row for part in _parts(store) for row in _query(part, "SELECT ex_num, worker_count FROM exs"))
    with closing(sqlite3.connect(_parts(store)[0])) as db, db:
        db.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", (ex_num + 1, workers, epoch))
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                   (STEP, key, epoch, blobs[-1][0]))
    return epoch


def _query(part: Path, sql: str, *args: object) -> list[tuple]:
    with closing(sqlite3.connect(part)) as db:
        return db.execute(sql, args).fetchall()


@pytest.mark.parametrize("clean", [True, False])
def test_a_crashed_runs_snapshot_is_not_resumed_from(tmp_path, clean):
    store = tmp_path / "recovery"
    items: list = [("a", 1), ("b", 10)]
    assert _run(store, items) == [("a", 1), ("b", 10)]
    # The crashed run had given b a's state (1) at the resume epoch. The next run touches only a in that
    # epoch and the next ones, commits them, and stops without an EOF (which would snapshot every key).
    _crash_after_snapshot(store, "b", like="a")
    items += [("a", 1), ("a", 1), ("a", 1), TestingSource.ABORT()]
    assert _run(store, items, clean) == [("a", 2), ("a", 3), ("a", 4)]
    items.append(("b", 10))
    got = _run(store, items, clean)
    if clean:
        assert got[-1] == ("b", 20)
    else:  # what Bytewax does unaided: b resumes from the dead run's snapshot
        assert got[-1] == ("b", 11)


@pytest.mark.parametrize("workers", [1, 3])
def test_resume_epoch_is_the_one_bytewax_resumes_from(tmp_path, workers):
    store = tmp_path / "recovery"
    items = [("a", 1), ("b", 2), ("a", 3)]
    _run(store, items, workers=workers)
    for step in ("run", "crash", "run", "run"):
        if step == "crash":
            _crash_after_snapshot(store, "b", like="a")
            continue
        predicted = resume_epoch(_parts(store))
        items.append(("c", len(items)))
        _run(store, items, workers=workers)
        latest = max(row for p in _parts(store) for row in _query(p, "SELECT ex_num, resume_epoch FROM exs"))
        assert latest[1] == predicted  # the epoch Bytewax recorded resuming from


def test_nothing_to_discard_in_a_new_or_cleanly_stopped_store(tmp_path):
    store = tmp_path / "recovery"
    open_store(store, 3)
    assert discard_uncommitted(store) == 0
    _run(store, [("a", 1)])
    assert discard_uncommitted(store) == 0


def test_a_store_missing_partitions_is_left_alone(tmp_path):
    store = tmp_path / "recovery"
    items = [("a", 1), ("b", 10)]
    _run(store, items)
    epoch = _crash_after_snapshot(store, "b", like="a")
    _parts(store)[-1].unlink()  # on another machine
    assert discard_uncommitted(store) == 0
    assert _query(_parts(store)[0], "SELECT COUNT(*) FROM snaps WHERE snap_epoch >= ?", epoch) == [(1,)]


def _open_together(store: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    open_store(Path(store), 4)


def test_processes_opening_a_new_store_together_all_start(tmp_path):
    """The processes of a multi-process flow open one new store at once; each used to find partitions another
    was still creating and crash (no such table, or a Bytewax panic on a locked database), 10 rounds in 10."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(3):
        store = tmp_path / f"recovery{round_}"
        start = fork.Barrier(3)
        procs = [fork.Process(target=_open_together, args=(str(store), start)) for _ in range(3)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0]
        assert [_query(part, "SELECT part_index, part_count FROM parts") for part in _parts(store)] == \
            [[(i, 4)] for i in range(4)]
