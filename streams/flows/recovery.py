"""The feature flow's Bytewax recovery store: create it, and drop what a crashed run left uncommitted.

Bytewax 0.21 keys a state snapshot by (step, key, epoch), not by execution, and resumes each key from
its newest snapshot below the resume epoch. A run killed after snapshotting epoch E but before its
frontier passed E leaves E's snapshots behind; the next run resumes at E and overwrites only the keys
it touches in E. Once that run commits E, a later resume loads the dead run's snapshot for every
other key: state that saw events the sources then replay. The kill -9 test failed so (1 run in 8 under
load): items ended with 6-8 purchases too many while users were exact, after a run died uncommitted
and the next one resumed at the same epoch. Deleting every snapshot at or past the resume epoch
before Bytewax starts closes that hole.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir

from streams.runtime.logging import get_logger

log = get_logger(__name__)


def open_store(path: Path, partitions: int) -> RecoveryConfig:
    """The recovery store at `path` (created with `partitions` on first start), cleaned of what a
    crashed run wrote past the epoch the next run resumes from. Processes of one flow sharing `path`
    take turns: started together on a new store, one would read the partitions another was still
    creating (a crash with "no such table" or "database is locked", every time when tried)."""
    path.mkdir(parents=True, exist_ok=True)
    with _exclusive(path / ".open.lock"):
        if not any(path.glob("part-*.sqlite3")):
            init_db_dir(path, partitions)
        discard_uncommitted(path)
    return RecoveryConfig(str(path))


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if missing) among processes of this machine."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resume_epoch(parts: list[Path]) -> int | None:
    """The epoch Bytewax will resume from (None for a store no run has used), computed as Bytewax does:
    the latest execution's lowest worker frontier, a worker without one counting as its resume epoch."""
    executions: list[tuple[int, int, int]] = []
    fronts: list[tuple[int, int, int]] = []
    for part in parts:
        with closing(sqlite3.connect(part)) as db:
            executions += db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
            fronts += db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts").fetchall()
    if not executions:
        return None
    ex_num, workers, resume = max(executions)
    progress = dict.fromkeys(range(workers), resume)
    for ex, worker, frontier in fronts:
        if ex == ex_num:
            progress[worker] = max(progress.get(worker, frontier), frontier)
    return min(progress.values())


def _complete(parts: list[Path]) -> bool:
    """Whether `parts` are all the store's partitions (each records the count)."""
    seen, counts = set(), set()
    for part in parts:
        with closing(sqlite3.connect(part)) as db:
            for index, count in db.execute("SELECT part_index, part_count FROM parts"):
                seen.add(index)
                counts.add(count)
    return len(counts) == 1 and seen == set(range(counts.pop()))


def discard_uncommitted(path: Path) -> int:
    """Delete the snapshots at or past the resume epoch in every partition under `path`; how many.

    Call it only while no run uses the store. With several processes sharing it, each cleans before it
    joins the cluster, and the cluster writes nothing before every process has joined, so none deletes
    what the new run wrote. Partitions spread over machines are left alone: the resume epoch needs them all.
    """
    parts = sorted(path.glob("part-*.sqlite3"))
    if not _complete(parts):
        log.warning("recovery partitions incomplete here; snapshots of interrupted runs not checked",
                    store=str(path), found=len(parts))
        return 0
    epoch = resume_epoch(parts)
    if epoch is None:
        return 0
    deleted = 0
    for part in parts:
        with closing(sqlite3.connect(part)) as db, db:
            deleted += db.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount
    if deleted:
        log.warning("discarded snapshots an interrupted run wrote past the resume epoch", count=deleted,
                    resume_epoch=epoch, store=str(path))
    return deleted
