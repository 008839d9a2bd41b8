"""The slot may only be confirmed up to transactions that Kafka fully acknowledged, in commit order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.cdc.acks import AckTracker


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=12), st.data())
def test_confirmable_is_the_end_of_the_longest_fully_acknowledged_prefix(sizes: list[int], data) -> None:
    completed: list[int] = []
    tracker = AckTracker(confirmed_lsn=5, on_complete=lambda t: completed.append(t.xid))
    txns = [tracker.begin(xid=i + 1) for i in range(len(sizes))]
    ends = [100 * (i + 1) for i in range(len(sizes))]
    # Every record is sent; its ack and every commit come in a random order (acks never precede sends).
    events = [("ack", i) for i, n in enumerate(sizes) for _ in range(n)] + [("commit", i) for i in range(len(sizes))]
    for i, n in enumerate(sizes):
        for _ in range(n):
            tracker.sent(txns[i])
    order = data.draw(st.permutations(events))
    acked = [0] * len(sizes)
    committed = [False] * len(sizes)
    for kind, i in order:
        if kind == "ack":
            tracker.acked(txns[i])
            acked[i] += 1
        else:
            tracker.commit(txns[i], ends[i])
            committed[i] = True
        oracle = 5
        for j in range(len(sizes)):
            if not (committed[j] and acked[j] == sizes[j]):
                break
            oracle = ends[j]
        assert tracker.confirmable() == oracle
    assert tracker.idle() and tracker.confirmed_lsn == ends[-1] and tracker.unacked == 0
    assert sorted(completed) == list(range(1, len(sizes) + 1))  # each transaction reported once


def test_a_delivery_error_blocks_confirmation_and_is_kept() -> None:
    tracker = AckTracker()
    first, second = tracker.begin(1), tracker.begin(2)
    for txn, end in ((first, 10), (second, 20)):
        tracker.sent(txn)
        tracker.commit(txn, end)
    tracker.acked(first, "cdc.shop.users: Broker: Message size too large")
    tracker.acked(second)
    assert tracker.confirmable() == 0
    assert tracker.failure == "cdc.shop.users: Broker: Message size too large"


def test_the_wal_end_is_confirmed_only_when_nothing_is_in_flight() -> None:
    tracker = AckTracker(confirmed_lsn=10)
    txn = tracker.begin(1)
    tracker.sent(txn)
    assert tracker.advance_idle(500) == 10
    tracker.commit(txn, 40)
    tracker.acked(txn)
    assert tracker.advance_idle(500) == 500
    assert tracker.advance_idle(300) == 500  # never backwards
