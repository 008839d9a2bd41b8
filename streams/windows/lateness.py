"""Allowed lateness, decided per source partition in offset order (the live flow and topic replay share it)."""

from __future__ import annotations


def admit(ts: int, high: int | None, lateness_ms: int) -> tuple[bool, int | None]:
    """(accepted, new high): an event is late when its time is more than `lateness_ms` behind the
    highest event time accepted so far in its partition; late events leave `high` unchanged."""
    if high is not None and ts < high - lateness_ms:
        return False, high
    return True, ts if high is None or ts > high else high
