"""Feature-log windows: each closed window holds, per entity, exactly the values as of its last write in it."""

from __future__ import annotations

import random

import pytest

from schemas.topics import CLICKSTREAM
from streams.features.shard import PLANS, ShardInput, ShardState
from tests.oracle import expected_features

T0 = 1_763_800_000_000
PERIOD, LATENESS = 60_000, 120_000


def _events(seed: int, n: int) -> list[dict]:
    rnd = random.Random(seed)
    out, clock = [], T0
    for _ in range(n):
        clock += rnd.randint(0, 4_000)
        kind = rnd.choice(["page_view", "click", "add_to_cart", "purchase"])
        out.append({"event_type": kind, "user_id": f"u{rnd.randint(0, 4)}", "item_id": f"i{rnd.randint(0, 3)}",
                    "price": round(rnd.uniform(1, 9), 2), "ts": clock, "session_id": f"s{clock // 900_000}"})
    return out


def _assert_complete(closed: list, events: list[dict]) -> None:
    """Every entity active in a closed window has a row there, carrying its last event time in that window."""
    for window in closed:
        last = {}
        for e in events:
            if window.window_start <= e["ts"] < window.window_end:
                last[e["user_id"]] = max(last.get(e["user_id"], 0), e["ts"])
        assert {eid: ts for eid, ts, _ in window.rows} == last


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_closed_windows_equal_the_oracle_as_of_each_rows_event_time(seed):
    events = _events(seed, 600)
    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)
    closed = []
    rnd = random.Random(seed)
    i = 0
    while i < len(events):
        size = rnd.choice([1, 7, 25, 400])  # small batches and batches spanning several windows
        batch = events[i:i + size]
        i += size
        state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in batch])])
        closed += state.close_windows()
    assert closed, "windows should close as event time advances"
    ends = [w.window_end for w in closed]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert max(ends) <= state.high - LATENESS
    for window in closed:
        for eid, ts, values in window.rows:
            assert window.window_start <= ts < window.window_end
            known = [(CLICKSTREAM.name, e) for e in events if e["ts"] <= ts]
            want = expected_features(known)[("user", eid)]
            assert values == pytest.approx({k: v for k, v in want.items() if k != "_ts"})
    _assert_complete(closed, events)  # whatever the batch boundaries
    rest = state.close_windows(force=True)  # idle: close every window that event time has passed
    assert all(w.window_end <= state.high for w in rest)
    assert all((k + 1) * PERIOD > state.high for k in state.pending)  # only the current window stays open


def test_pending_windows_survive_a_snapshot():
    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)
    state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in _events(4, 50)])])
    restored = ShardState.restore("user", state.snapshot(), period_ms=PERIOD, lateness_ms=LATENESS)
    assert restored.pending == state.pending and restored.high == state.high
    assert {k: s.dump() for k, s in restored.states.items()} == {k: s.dump() for k, s in state.states.items()}


def test_a_window_written_twice_merges_instead_of_losing_rows(tmp_path):
    import pyarrow.parquet as pq

    from streams.features.shard import FeatureLogWindow
    from streams.sinks.feature_log import write_window

    first = FeatureLogWindow("user", 0, PERIOD, [("u1", 10, {"views_1h": 1}), ("u2", 20, {"views_1h": 2})])
    later = FeatureLogWindow("user", 0, PERIOD, [("u2", 30, {"views_1h": 5}), ("u3", 40, {"views_1h": 3})])
    write_window(tmp_path, "user:0", first)
    path = write_window(tmp_path, "user:0", later)
    rows = {r["entity_id"]: r["views_1h"] for r in pq.read_table(path).to_pylist()}
    assert rows == {"u1": 1, "u2": 5, "u3": 3}
    assert len(list(tmp_path.rglob("*.parquet"))) == 1


@pytest.mark.parametrize("seal_chunk", [3, 1024])  # final log entries pickled between batches, or at snapshots
@pytest.mark.parametrize("seed", [5, 6, 7])
def test_incremental_snapshots_restore_exactly_what_a_full_copy_would(seed, seal_chunk, monkeypatch):
    """Snapshots re-pickle only changed entities, some of them ahead of time (`freeze_some`, as the flow does
    after each batch); restoring any of them (and snapshotting a restored state again) must give exactly
    the state a fresh full copy would."""
    import pickle

    from streams.features import shard

    monkeypatch.setattr(shard, "SEAL_CHUNK", seal_chunk)
    rnd = random.Random(seed)
    events = _events(seed, 800)
    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)
    i = 0
    while i < len(events):
        size = rnd.choice([1, 5, 40])
        state.clock = i  # as the flow stamps changes with its clock: here, the position in the stream
        state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in events[i:i + size]])])
        # entities pickled early (all, or only those unchanged for a while), then often changed again
        state.freeze_some(rnd.choice([0, 1, 2, 100]), rnd.choice([float("inf"), i, i - 30]))
        i += size
        if rnd.random() < 0.3:
            snap = state.snapshot()
            restored = ShardState.restore("user", snap, period_ms=PERIOD, lateness_ms=LATENESS)
            assert {k: s.dump() for k, s in restored.states.items()} == {k: s.dump() for k, s in state.states.items()}
            assert restored.pending == state.pending and restored.high == state.high
            if rnd.random() < 0.5:
                state = restored  # go on from the restored copy, as after a crash
    full = {k: s.dump() for k, s in state.states.items()}
    assert {k: PLANS["user"].thaw(b).dump() for k, b in pickle.loads(state.snapshot())[0].items()} == full


def test_snapshots_written_by_earlier_versions_still_restore():
    import pickle

    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)
    state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in _events(8, 60)])])
    dumps = {k: s.dump() for k, s in state.states.items()}
    before_entity_bytes = pickle.dumps((dumps, state.pending, state.high))
    entity_bytes = {k: pickle.dumps(d) for k, d in dumps.items()}
    before_window_bytes = pickle.dumps((entity_bytes, state.pending, state.high))
    whole_windows = pickle.dumps((entity_bytes, {k: pickle.dumps(w) for k, w in state.pending.items()}, state.high))
    for old in (before_entity_bytes, before_window_bytes, whole_windows):
        restored = ShardState.restore("user", old, period_ms=PERIOD, lateness_ms=LATENESS)
        assert {k: s.dump() for k, s in restored.states.items()} == dumps
        assert restored.pending == state.pending and restored.high == state.high
        # snapshotted again in today's layout: the final entries of those windows are sealed, the rest evaluated
        again = ShardState.restore("user", restored.snapshot(), period_ms=PERIOD, lateness_ms=LATENESS)
        assert again.pending == state.pending


def test_a_window_written_since_the_last_snapshot_restores_as_it_is_now():
    """Snapshots keep each open log window's bytes while it is unchanged: a window written after a snapshot, or
    closed and opened again under the same index, must come back as it is now, never as it was."""
    events = _events(15, 200)
    state = ShardState("user", period_ms=PERIOD, lateness_ms=10 * PERIOD)  # several windows stay open

    def restored() -> ShardState:
        return ShardState.restore("user", state.snapshot(), period_ms=PERIOD, lateness_ms=10 * PERIOD)

    def feed(batch: list[dict]) -> None:
        state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in batch])])

    feed(events[:150])
    assert len(state.pending) > 2 and restored().pending == state.pending
    oldest = min(state.pending)
    late = {**events[0], "ts": oldest * PERIOD + 1, "user_id": "u9"}  # writes only into the oldest open window
    feed([late])
    assert "u9" in restored().pending[oldest] and restored().pending == state.pending
    state.close_windows(force=True)
    feed([late])  # the oldest window again, closed meanwhile: a new window under the same index
    again = restored()
    assert again.pending == state.pending and set(again.pending[oldest]) == {"u9"}


def test_a_snapshot_pickles_a_log_entry_once_it_is_final_and_names_the_current_ones():
    """An entry whose entity has moved on to a later window cannot change again: it is pickled once. An entry
    still current holds its entity's present values: the snapshot names the entity, `restore` evaluates it."""
    import pickle

    from schemas.topics import CDC_USERS

    state = ShardState("user", period_ms=PERIOD, lateness_ms=10 * PERIOD)

    def feed(topic: str, *rows: dict) -> None:
        state.apply([ShardInput("user", topic, [(r.get("user_id") or r["after"]["user_id"], r) for r in rows])])

    def windows() -> dict:
        return pickle.loads(state.snapshot())[1]

    def view(user: str, ts: int) -> dict:
        return {"event_type": "page_view", "user_id": user, "item_id": "i1", "price": 2.0, "ts": ts, "session_id": "s"}

    feed(CLICKSTREAM.name, *(view(f"u{n}", T0 + n) for n in range(50)))
    first = T0 // PERIOD
    assert windows() == {first: ([], [f"u{n}" for n in range(50)])}  # no values pickled: all current
    feed(CLICKSTREAM.name, view("u1", T0 + PERIOD), view("u2", T0 + PERIOD + 1))  # two move on
    change = {"op": "u", "before": None, "after": {"user_id": "u3", "tier": "gold", "country": "DE",
                                                   "signup_ts": T0}, "ts_ms": T0 + PERIOD + 2}
    feed(CDC_USERS.name, change)  # a CDC change moves an entity on too
    snap = windows()
    chunks, live = snap[first]
    assert [set(pickle.loads(c)) for c in chunks] == [{"u1", "u2", "u3"}] and len(live) == 47
    assert snap[first + 1] == ([], ["u1", "u2", "u3"])
    feed(CLICKSTREAM.name, view("u1", T0 + PERIOD + 5))  # nothing else leaves the first window
    assert windows()[first][0] == chunks  # the same bytes, not pickled again
    restored = ShardState.restore("user", state.snapshot(), period_ms=PERIOD, lateness_ms=10 * PERIOD)
    assert restored.pending == state.pending


def test_freeze_some_pickles_the_least_recently_changed_quiet_entities_first():
    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)

    def change(clock: float, *users: str) -> None:
        state.clock = clock
        state.apply([ShardInput("user", CLICKSTREAM.name, [(u, {"event_type": "click", "ts": T0, "user_id": u})
                                                            for u in users])])

    change(1, "a")
    change(2, "b")
    change(3, "c")
    assert state.freeze_some(10, changed_before=2.5) == 2  # a and b; c changed too recently
    change(4, "a")  # changed again: pickled again later
    assert state.freeze_some(1) == 1 and state.freeze_some(1, changed_before=3.5) == 0  # c went first; a is at 4
    assert state.freeze_some(10) == 1 and state.freeze_some(10) == 0


@pytest.mark.parametrize("seed", [8, 9, 10, 11])
def test_a_crash_anywhere_then_replay_from_the_last_snapshot_ends_where_a_straight_run_does(seed):
    """What recovery does: at a crash, go back to the last snapshot and its stream position, apply again
    from there (with early pickling in between, as the flow does). The end state must be a straight run's."""
    rnd = random.Random(seed)
    events = _events(seed, 900)
    straight = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)
    for e in events:
        straight.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e)])])
    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS)
    snap, snap_at, i, clock = state.snapshot(), 0, 0, 0.0
    while i < len(events):
        size = rnd.choice([1, 3, 20])
        clock += 1.0
        state.clock = clock
        state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in events[i:i + size]])])
        i += size
        state.freeze_some(rnd.choice([1, 2, 50]), clock - rnd.choice([0.0, 1.0, 3.0]))
        r = rnd.random()
        if r < 0.15:
            snap, snap_at = state.snapshot(), i  # an epoch ends
        elif r < 0.25:
            state = ShardState.restore("user", snap, period_ms=PERIOD, lateness_ms=LATENESS)  # kill -9
            i = snap_at
    assert {k: s.dump() for k, s in state.states.items()} == {k: s.dump() for k, s in straight.states.items()}


def _two_partitions(seed: int, ahead: bool) -> list[tuple[int, list[dict], int]]:
    """Events of users u0-u4 keyed to two partitions (u0-u2 -> 0, u3-u4 -> 1, as keying by user does) and read
    in batches, partition 0 running up to twice the lateness ahead in event time when `ahead`: (partition,
    batch, the partition's event-time high after it) per batch, as the source hands them to the shards."""
    from streams.windows.lateness import admit

    rnd = random.Random(seed)
    streams = {p: [e for e in _events(seed, 900) if (e["user_id"] in ("u0", "u1", "u2")) == (p == 0)] for p in (0, 1)}
    out, at, highs = [], {0: 0, 1: 0}, {0: None, 1: None}
    while at[0] < len(streams[0]) or at[1] < len(streams[1]):
        lead = (streams[0][min(at[0], len(streams[0]) - 1)]["ts"] - streams[1][min(at[1], len(streams[1]) - 1)]["ts"])
        p = 1 if at[0] >= len(streams[0]) or (ahead and lead > 2 * LATENESS) or (not ahead and lead > 0) else 0
        if at[p] >= len(streams[p]):
            p = 1 - p
        batch = streams[p][at[p]:at[p] + rnd.choice([1, 5, 30])]
        at[p] += len(batch)
        for e in batch:
            accepted, highs[p] = admit(e["ts"], highs[p], LATENESS)
            assert accepted  # each partition is in event-time order
        out.append((p, batch, highs[p]))
    return out


@pytest.mark.parametrize("seed", [12, 13, 14])
def test_windows_close_by_the_slowest_partition_so_none_reopens(seed):
    """A partition running ahead may not close a window that a slower partition still feeds: each window closes
    once, complete (the shard's own high alone closed it early, and the slower partition's rows reopened it)."""
    def run(with_marks: bool) -> list:
        sources = frozenset({(CLICKSTREAM.name, 0), (CLICKSTREAM.name, 1)}) if with_marks else frozenset()
        state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS, sources=sources)
        closed = []
        for p, batch, high in _two_partitions(seed, ahead=True):
            marks = {"partition": p, "high": high} if with_marks else {}
            state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in batch], **marks)])
            closed += state.close_windows()
        return closed + state.close_windows(force=True)

    closed = run(with_marks=True)
    ends = [w.window_end for w in closed]
    assert len(set(ends)) == len(ends), "a window closed twice"
    events = [e for _, batch, _ in _two_partitions(seed, ahead=True) for e in batch]
    _assert_complete(closed, events)
    unmarked = [w.window_end for w in run(with_marks=False)]
    assert len(set(unmarked)) < len(unmarked)  # what the marks prevent: the same input reopens windows without them


def test_a_partition_not_heard_from_within_the_mark_ttl_stops_holding_windows_back():
    """Partition 1 goes silent, and partition 2, expected, is never heard from: both hold windows back for 30 s."""
    sources = frozenset((CLICKSTREAM.name, p) for p in range(3))
    state = ShardState("user", period_ms=PERIOD, lateness_ms=LATENESS, mark_ttl_s=30.0, sources=sources)
    slow = {"event_type": "click", "user_id": "u1", "ts": T0}
    state.clock = 0.0
    state.apply([ShardInput("user", CLICKSTREAM.name, [("u1", slow)], partition=1, high=T0)])
    for n in range(1, 6):  # partition 0 moves on, 4 periods past the lateness; partition 1 is silent
        state.clock = float(n * 10)
        ts = T0 + n * 2 * PERIOD
        state.apply([ShardInput("user", CLICKSTREAM.name, [("u0", {**slow, "user_id": "u0", "ts": ts})],
                                partition=0, high=ts)])
        closed = state.close_windows()
        if state.clock <= 30.0:  # heard from (or began) within the last 30 s
            assert closed == [], "held back by partitions 1 and 2"
        else:
            assert closed, "neither holds windows back any more"
    assert state.watermark() == T0 + 10 * PERIOD  # partition 1 unheard for 50 s: only partition 0 counts
    assert not any((k + 1) * PERIOD <= state.watermark() - LATENESS for k in state.pending)
