"""Allowed lateness per partition, and why one event stamped in the future cannot make the rest late."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streams.features.shard import ShardInput, ShardState
from streams.windows.lateness import MAX_CLOCK_SKEW_MS, NO_HIGH, admit, admit_all

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


@given(st.lists(st.tuples(st.integers(-2 * LATENESS, 2 * LATENESS), st.sampled_from([-1, 0, 1, 2]),
                          st.integers(-3 * MAX_CLOCK_SKEW_MS, 3 * MAX_CLOCK_SKEW_MS), st.booleans()), max_size=60),
       st.one_of(st.none(), st.integers(-LATENESS, LATENESS)))
def test_a_poll_admitted_at_once_is_admitted_as_event_after_event(rows, start) -> None:
    """`admit_all` (numpy, per poll) decides, judges against and ends on the same highs as `admit` in offset order;
    rows that are not valid are skipped. Times jump back and forth across the lateness, with and without Kafka
    timestamps (<= 0: none) and some of them ahead of theirs by more than the allowed skew."""
    ts = [NOW + t for t, _, _, _ in rows]
    appended = [NOW + a if kind > 0 else kind for _, kind, a, _ in rows]
    valid = [v for _, _, _, v in rows]
    high = None if start is None else NOW + start
    accepted, before = [], []
    for t, a, v in zip(ts, appended, valid):
        before.append(NO_HIGH if high is None else high)
        if v:
            ok, high = admit(t, high, LATENESS, a)
            accepted.append(ok)
        else:
            accepted.append(False)
    got, got_before, got_high = admit_all(np.array(ts, np.int64), np.array(appended, np.int64), np.array(valid, bool),
                                          None if start is None else NOW + start, LATENESS)
    assert got.tolist() == accepted and got_before.tolist() == before and got_high == high
