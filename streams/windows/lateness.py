"""Allowed lateness, decided per source partition in offset order (the live flow and topic replay share it)."""

from __future__ import annotations

import numpy as np

MAX_CLOCK_SKEW_MS = 60_000  # how far ahead of its Kafka timestamp an event may move its partition's event time
NO_HIGH = np.iinfo(np.int64).min  # `admit_all`: no event time seen yet (`high` None)


def admit(ts: int, high: int | None, lateness_ms: int, appended_ms: int | None = None) -> tuple[bool, int | None]:
    """(accepted, new high): an event is late when its time is more than `lateness_ms` behind the
    highest event time accepted so far in its partition; late events leave `high` unchanged.

    With `appended_ms` (the record's Kafka timestamp) the high moves at most to it plus
    `MAX_CLOCK_SKEW_MS`: one event stamped in the future (a time-zone bug, accepted up to 1 h ahead)
    must not make the rest of its partition late for an hour. Both inputs are in the record, so a
    replay of the topic decides exactly as the live flow did.
    """
    if high is not None and ts < high - lateness_ms:
        return False, high
    advance = ts if appended_ms is None or appended_ms <= 0 else min(ts, appended_ms + MAX_CLOCK_SKEW_MS)
    return True, advance if high is None or advance > high else high


def admit_all(ts: np.ndarray, appended_ms: np.ndarray, valid: np.ndarray, high: int | None,
              lateness_ms: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """`admit` over a poll's events in offset order at once: (accepted, the high each event was judged against
    (`NO_HIGH` where none yet), the new high). Rows not `valid` (dead letters) are skipped: neither admitted
    nor moving the high. A late event cannot move the high (its time is below it), so the high before each event is
    the running maximum of the advances of all valid events before it, which numpy computes in one pass."""
    advance = np.where(appended_ms > 0, np.minimum(ts, appended_ms + MAX_CLOCK_SKEW_MS), ts)
    running = np.maximum.accumulate(np.concatenate(([NO_HIGH if high is None else high],
                                                    np.where(valid, advance, NO_HIGH))))
    before = running[:-1]
    accepted = valid & ((before == NO_HIGH) | (ts >= before - lateness_ms))
    last = int(running[-1])
    return accepted, before, None if last == NO_HIGH else last
