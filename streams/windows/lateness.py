"""Allowed lateness, decided per source partition in offset order (the live flow and topic replay share it)."""

from __future__ import annotations

MAX_CLOCK_SKEW_MS = 60_000  # how far ahead of its Kafka timestamp an event may move its partition's event time


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
