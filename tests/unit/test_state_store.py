"""Shard state as segment files: whatever the save points, loading a manifest gives the state a whole snapshot would."""

from __future__ import annotations

import pickle
import random

import pytest

from schemas.errors import RecoveryError
from schemas.topics import CLICKSTREAM
from streams.features import shard
from streams.features.shard import ShardInput, ShardState
from streams.flows.features import EpochClock, ShardLogic
from streams.flows.state_store import SegmentStore, is_manifest
from tests.unit.test_feature_log_windows import LATENESS, PERIOD, _events

OPTIONS = {"period_ms": PERIOD, "lateness_ms": LATENESS}


def _same(a: ShardState, b: ShardState) -> None:
    assert {k: s.dump() for k, s in a.states.items()} == {k: s.dump() for k, s in b.states.items()}
    assert a.pending == b.pending and a.high == b.high


@pytest.mark.parametrize("seal_chunk", [2, 1024])  # final log entries pickled between batches, or at snapshots
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_manifest_loads_exactly_the_state_a_whole_snapshot_restores(seed, seal_chunk, tmp_path, monkeypatch):
    monkeypatch.setattr(shard, "SEAL_CHUNK", seal_chunk)
    rnd = random.Random(seed)
    events = _events(seed, 1500)
    state, store = ShardState("user", **OPTIONS), SegmentStore(tmp_path, "user:3", keep=2)
    bases, i = set(), 0
    while i < len(events):
        size = rnd.choice([1, 5, 40])
        state.clock = i
        state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in events[i:i + size]])])
        state.freeze_some(rnd.choice([0, 1, 100]), rnd.choice([float("inf"), i - 30]))
        state.close_windows()
        i += size
        if rnd.random() < 0.05:
            state.snapshot()  # a whole snapshot in between (the flow without segments) changes no later save
        if rnd.random() < 0.2:
            manifest = pickle.loads(store.save(state))
            assert is_manifest(manifest)
            bases.add(store.segments[0][0])
            loaded = SegmentStore(tmp_path, "user:3", keep=2)
            restored = ShardState.from_parts("user", *loaded.load(manifest), **OPTIONS)
            _same(restored, ShardState.restore("user", state.snapshot(), **OPTIONS))  # (also seals entries: the
            # next save must still hand them out)
            if rnd.random() < 0.3:
                state, store = restored, loaded  # go on from what was loaded, as after a crash
    assert len(bases) > 2  # deltas outgrew the base several times
    # replaced segments are deleted `keep` saves later: what is left is the manifest's files and the recent ones
    assert len(list(store.dir.iterdir())) <= len(store.segments) + 3 * len(bases)


def test_files_no_manifest_names_are_deleted_and_a_missing_one_is_a_clear_error(tmp_path):
    state, store = ShardState("user", **OPTIONS), SegmentStore(tmp_path, "item:0")
    state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in _events(9, 50)])])
    manifest = pickle.loads(store.save(state))
    (store.dir / "000000007-deadbeef.seg").write_bytes(b"left by a run that died before committing")
    SegmentStore(tmp_path, "item:0").load(manifest)
    assert sorted(p.name for p in store.dir.iterdir()) == [name for name, _ in store.segments]
    k, (n, live) = next(iter(manifest[3].items()))
    short = (*manifest[:3], {**manifest[3], k: (n + 1, live)}, manifest[4])  # names a chunk no segment holds
    with pytest.raises(RecoveryError, match=f"hold {n} log chunks of window {k}, the manifest names {n + 1}"):
        SegmentStore(tmp_path, "item:0").load(short)
    path = store.dir / store.segments[0][0]
    path.write_bytes(path.read_bytes()[:-10])  # cut short: the manifest's size tells, before unpickling
    with pytest.raises(RecoveryError, match="bytes where the manifest says"):
        SegmentStore(tmp_path, "item:0").load(manifest)
    path.unlink()
    with pytest.raises(RecoveryError, match="cannot be read"):
        SegmentStore(tmp_path, "item:0").load(manifest)


def test_the_flow_resumes_from_a_manifest_only_with_its_segments(tmp_path):
    state, store = ShardState("user", **OPTIONS), SegmentStore(tmp_path, "user:1")
    state.apply([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in _events(5, 80)])])
    resume = ("user", store.save(state))
    logic = ShardLogic(PERIOD, LATENESS, 30.0, {}, tmp_path, EpochClock(10.0), resume)
    _same(logic._state, ShardState.restore("user", state.snapshot(), **OPTIONS))
    with pytest.raises(RecoveryError, match="STREAMML_FEATURES_RECOVERY=true"):
        ShardLogic(PERIOD, LATENESS, 30.0, {}, None, EpochClock(10.0), resume)


def test_the_epoch_clock_expects_the_next_snapshot_one_epoch_after_the_first_of_the_last():
    clock = EpochClock(10.0)
    assert clock.until_next(5.0) is None  # no snapshot seen yet
    clock.snapshotted(100.0)
    clock.snapshotted(100.4)  # the other shards' snapshots of the same epoch do not move it
    assert clock.until_next(109.5) == pytest.approx(0.5)
    assert clock.until_next(110.3) == 0.0  # late: due now, until it comes
    assert clock.until_next(127.0) == pytest.approx(3.0)  # epochs with no snapshot here (no key changed)


@pytest.mark.parametrize("to_snapshot", [0.1, 5.0])
def test_before_a_snapshot_is_due_entities_are_pickled_without_waiting_to_be_quiet(to_snapshot):
    import time

    clock = EpochClock(10.0)
    clock.snapshotted(time.monotonic() - 10.0 + to_snapshot)
    logic = ShardLogic(PERIOD, LATENESS, 30.0, {}, None, clock, None)
    events = _events(3, 60)
    first, second = events[:30], events[30:]
    for batch in (first, second):
        logic.on_batch([ShardInput("user", CLICKSTREAM.name, [(e["user_id"], e) for e in batch], shard="user:0")])
    left = {e["user_id"] for e in second} if to_snapshot < 1.0 else {e["user_id"] for e in events}
    assert logic._state.dirty == len(left)  # just before: only the last batch's entities are left to pickle
