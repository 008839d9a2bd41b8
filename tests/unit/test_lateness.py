"""Allowed lateness per partition, and why one event stamped in the future cannot make the rest late."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.features.shard import ShardInput, ShardState
from streams.windows.lateness import MAX_CLOCK_SKEW_MS, admit

NOW = 1_763_800_000_000
LATENESS = 300_000


def test_a_future_stamped_event_does_not_make_the_next_hour_late() -> None:
    high = None
    decisions = []
    for ts in (NOW - 1000, NOW + 50 * 60_000, NOW + 1000, NOW + 2000):  # a +50 min time-zone bug, then normal
        accepted, high = admit(ts, high, LATENESS, appended_ms=NOW)
        decisions.append(accepted)
    assert decisions == [True, True, True, True]
    assert high == NOW + MAX_CLOCK_SKEW_MS
    # without the Kafka timestamp (the old rule) the same stream dead-letters the normal events as late
    high, old = None, []
    for ts in (NOW - 1000, NOW + 50 * 60_000, NOW + 1000):
        accepted, high = admit(ts, high, LATENESS)
        old.append(accepted)
    assert old == [True, True, False]


@given(st.lists(st.tuples(st.integers(-600_000, 600_000), st.integers(-5_000, 5_000)), min_size=1, max_size=60))
def test_with_honest_timestamps_the_cap_changes_nothing(offsets: list[tuple[int, int]]) -> None:
    """Events no more than the skew ahead of their Kafka timestamps are admitted exactly as before."""
    capped = plain = None
    for event_offset, append_offset in offsets:
        ts, appended = NOW + event_offset, NOW + event_offset + append_offset  # |ts - appended| <= 5 s
        a, capped = admit(ts, capped, LATENESS, appended_ms=appended)
        b, plain = admit(ts, plain, LATENESS)
        assert a == b and capped == plain


def test_the_feature_log_does_not_close_windows_on_a_future_event() -> None:
    shard = ShardState("user", period_ms=60_000, lateness_ms=LATENESS)

    def event(n: int, ts: int) -> dict:
        return {"event_id": f"e{n}", "user_id": f"u{n}", "session_id": "s", "event_type": "page_view",
                "item_id": "i", "price": 1.0, "ts": ts, "page": "/", "referrer": None, "device": "mobile",
                "country": "DE", "props": {}}

    shard.apply([ShardInput("user", "clickstream.events", rows=[("u1", event(1, NOW))], max_kafka_ts=NOW)])
    shard.apply([ShardInput("user", "clickstream.events", rows=[("u2", event(2, NOW + 50 * 60_000))],
                            max_kafka_ts=NOW)])
    assert shard.high == NOW + MAX_CLOCK_SKEW_MS
    assert shard.close_windows() == []  # the window holding NOW is still filling
