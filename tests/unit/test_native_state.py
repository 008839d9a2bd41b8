"""The compiled feature state (streams/features/native_state.pyx) equals the pure-Python reference bit for bit:
the same state after every event, the same values, the same shard outputs and snapshots that either engine reads."""

from __future__ import annotations

import gc
import pickle
import random
import struct
import types
import zlib
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import ConfigError, RecoveryError
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM
from streams.features import shard as shard_module
from streams.features import state as state_module
from streams.features.definitions import ENTITIES, FEATURES, Agg, FeatureDefinition
from streams.features.shard import ShardState, route
from streams.features.state import EntityPlan, engine_from_env, native_state

T0 = 1_763_800_000_000
pytestmark = pytest.mark.skipif(native_state is None, reason="the native engine was not built (see "
                                "test_entity_state.py::test_the_native_engine_is_built, which fails then)")
REF = {e.name: EntityPlan(e, engine="python") for e in ENTITIES}
NAT = {e.name: EntityPlan(e, engine="native") for e in ENTITIES} if native_state is not None else {}


def _click(rnd: random.Random, ts: int, user: str = "u1") -> dict:
    kind = rnd.choice(["page_view", "click", "add_to_cart", "purchase", "search"])
    item = None if kind == "search" else f"i{rnd.randint(0, 5)}"
    event = {"event_type": kind, "user_id": user, "item_id": item, "ts": ts, "session_id": f"s{ts // 1_800_000}",
             "price": round(rnd.uniform(1, 100), 2) if item and rnd.random() < 0.8 else None}
    if rnd.random() < 0.1:
        event["event_type"] = rnd.choice([None, "refund", 3])
    if rnd.random() < 0.1:
        del event[rnd.choice(["price", "item_id", "session_id", "event_type"])]
    return event


def _change(rnd: random.Random, entity: str, ts: int) -> tuple[str, dict]:
    if entity == "user":
        topic, row = CDC_USERS.name, {"user_id": "u1", "tier": rnd.choice(["free", "plus"]), "country": "DE",
                                      "signup_ts": ts - rnd.randint(0, 400) * 86_400_000, "marketing_opt_in": True}
    else:
        topic, row = CDC_ITEMS.name, {"item_id": "u1", "category": rnd.choice(["a", "b"]), "price": rnd.uniform(1, 9)}
    op = rnd.choice(["c", "u", "r", "d"])
    return topic, {"op": op, "before": row, "after": None if op == "d" else row, "ts_ms": ts}


def _same_values(a: dict, b: dict) -> None:
    assert list(a.items()) == list(b.items())  # the same keys in the same order, equal values...
    assert [type(v) for v in a.values()] == [type(v) for v in b.values()]  # ...of the same types


@given(st.integers(0, 2**32), st.integers(1, 150), st.integers(0, 3 * 86_400_000))
@settings(max_examples=80, deadline=None)
def test_after_every_event_the_native_state_is_the_references(seed, n, spread):
    """Out-of-order and out-of-window times, unknown and missing event types and fields, CDC changes and
    deletes, values read (which prunes) and snapshots taken at random points, in either engine's bytes."""
    rnd = random.Random(seed)
    for name in REF:
        ref, nat = REF[name].new_state(), NAT[name].new_state()
        for _ in range(n):
            ts = T0 + rnd.randint(0, spread)
            if rnd.random() < 0.1:
                topic, change = _change(rnd, name, ts)
                for plan, s in ((REF[name], ref), (NAT[name], nat)):
                    s.apply_change(plan, topic, change["op"], change["after"], ts)
            else:
                event = _click(rnd, ts)
                ref.apply_event(REF[name], event, ts)
                nat.apply_event(NAT[name], event, ts)
            if rnd.random() < 0.3:
                _same_values(nat.values(NAT[name]), ref.values(REF[name]))
            assert nat.dump() == ref.dump() and nat.ts == ref.ts
            if rnd.random() < 0.1:
                nat = NAT[name].thaw(nat.freeze())
            elif rnd.random() < 0.05:
                nat = NAT[name].thaw(ref.freeze())  # a reference snapshot, read by the native engine
            elif rnd.random() < 0.05:
                ref = REF[name].thaw(nat.freeze())  # and the other way
        _same_values(nat.values(NAT[name]), ref.values(REF[name]))
        assert nat.dump() == ref.dump()


def test_keys_that_are_not_strings_survive_a_snapshot():
    """Distinct values and session ids are whatever events carry; non-strings are pickled instead of packed."""
    plan = NAT["user"]
    state = plan.new_state()
    for k, (item, session) in enumerate([(7, 1), ("i2", 1), ((1, 2), "s")]):
        state.apply_event(plan, {"event_type": "click", "item_id": item, "session_id": session, "ts": T0 + k}, T0 + k)
    back = plan.thaw(state.freeze())
    assert back.dump() == state.dump() and back.values(plan) == state.values(plan)
    assert back.values(plan)["distinct_items_1h"] == 3


def test_damaged_state_bytes_are_a_recovery_error_that_says_how_to_start_over():
    state = NAT["user"].new_state()
    state.apply_event(NAT["user"], _click(random.Random(1), T0), T0)
    frozen = state.freeze()
    for damaged in (frozen[:-3], frozen + b"x", b"N\x09" + frozen[2:]):
        for plan in (NAT["user"], REF["user"]):
            with pytest.raises(RecoveryError, match="start over"):
                plan.thaw(damaged)


def test_an_unknown_engine_is_a_config_error(monkeypatch):
    monkeypatch.setenv("STREAMML_FEATURES_ENGINE", "fortran")
    with pytest.raises(ConfigError, match="auto, native, python"):
        engine_from_env()
    monkeypatch.setenv("STREAMML_FEATURES_ENGINE", "python")
    assert EntityPlan(ENTITIES[0]).native is None
    monkeypatch.setenv("STREAMML_FEATURES_ENGINE", "native")
    monkeypatch.setattr(state_module, "native_state", None)
    with pytest.raises(ConfigError, match="g\\+\\+"):
        engine_from_env()


def _stream(seed: int, n: int) -> list[dict]:
    rnd = random.Random(seed)
    out, clock = [], T0
    for _ in range(n):
        clock += rnd.randint(-20_000, 40_000)  # out of order, within the lateness
        out.append(_click(rnd, clock, f"u{rnd.randint(0, 30)}"))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_shard_writes_logs_and_snapshots_the_same_in_both_engines(seed):
    """`ShardState` with the compiled fold (`fold_events`, `evaluate`) gives the reference's Redis rows, closed log
    windows and snapshots; a snapshot of either engine restores in the other."""
    rnd = random.Random(seed)
    events = _stream(seed, 2000)
    options = {"period_ms": 60_000, "lateness_ms": 120_000}
    shards = {engine: {e: ShardState(e, plan=plans[e], **options) for e in plans} for engine, plans in
              (("python", REF), ("native", NAT))}
    i = 0
    while i < len(events):
        size = rnd.choice([1, 7, 60])
        chunk = [(k, e) for k, e in enumerate(events[i:i + size], start=i)]
        out = {}
        for engine, states in shards.items():
            got = []
            for key, part in route(CLICKSTREAM.name, chunk, 0, 1):
                shard = states[part.entity]
                shard.clock = i
                writes = shard.apply([part])
                shard.freeze_some(i % 3, i - 30)  # some entities frozen between batches, as the flow does
                got.append((key, writes.rows, [(w.window_start, w.rows) for w in shard.close_windows()]))
            out[engine] = got
        assert out["native"] == out["python"]
        i += size
        if rnd.random() < 0.15:  # restore each engine from the other's snapshot, as after an upgrade
            snaps = {engine: {e: s.snapshot() for e, s in states.items()} for engine, states in shards.items()}
            for engine, other, plans in (("python", "native", REF), ("native", "python", NAT)):
                shards[engine] = {e: ShardState.restore(e, snaps[other][e], plan=plans[e], **options)
                                  for e in plans}
    for e in REF:
        ref, nat = shards["python"][e], shards["native"][e]
        assert {k: s.dump() for k, s in nat.states.items()} == {k: s.dump() for k, s in ref.states.items()}
        assert [(w.window_start, w.rows) for w in nat.close_windows(force=True)] == \
               [(w.window_start, w.rows) for w in ref.close_windows(force=True)]


def test_what_the_compiled_shard_keeps_is_out_of_the_cyclic_gcs_view():
    """The tuples the compiled engine makes for what lives on (sessions, log entries, Redis rows) and each state's
    distinct sets hold no containers that could lead back to them, so they are made untracked: young collections
    walked them (92 ms of the flow's one collection in the benchmark's catch-up, 45 ms without them)."""
    events = [(k, e) for k, e in enumerate(_stream(5, 300))]
    gc.disable()  # a collection would untrack what it finds untrackable and hide a regression
    try:
        before = {id(o) for o in gc.get_objects()}
        shard = ShardState("user", plan=NAT["user"], period_ms=60_000)
        writes = shard.apply([part for _, part in route(CLICKSTREAM.name, events, 0, 1)])
        made = [o for o in gc.get_objects() if id(o) not in before]
    finally:
        gc.enable()
    entries = [entry for window in shard.pending.values() for entry in window.values()]
    assert writes.rows and entries and len(shard.states) > 10
    # Rows, log entries, sessions, distinct sets and routed pairs (not a closure's cells, which Python makes).
    assert [o for o in made if type(o) is tuple and not all(type(x) is types.CellType for x in o)] == []
    assert not any(gc.is_tracked(values) for _, _, values in writes.rows)  # scalars only: dicts stay untracked too


def test_a_ratio_of_a_ratio_evaluated_later_reads_it_as_0_in_both_engines():
    """Ratios are evaluated after every other feature, in order: one whose input is a later ratio reads 0 for it,
    as the reference's `out.get(name, 0)` does (the compiled values start from every name, with None)."""
    item = next(e for e in ENTITIES if e.name == "item")
    extra = (FeatureDefinition("r_first", item, CLICKSTREAM, Agg.RATIO, "float", 0.0, inputs=("r_second", "views_1h")),
             FeatureDefinition("r_second", item, CLICKSTREAM, Agg.RATIO, "float", 0.0, inputs=("clicks_1h", "views_1h")))
    ref, nat = (EntityPlan(item, FEATURES + extra, engine=engine) for engine in ("python", "native"))
    states = ref.new_state(), nat.new_state()
    for ts, kind in ((T0, "page_view"), (T0 + 1, "click"), (T0 + 2, "page_view")):
        for plan, state in zip((ref, nat), states):
            state.apply_event(plan, {"event_type": kind, "item_id": "i1", "ts": ts}, ts)
    got = [state.values(plan) for plan, state in zip((ref, nat), states)]
    _same_values(got[1], got[0])
    assert got[1]["r_first"] == 0.0 and got[1]["r_second"] == 0.5


def test_snapshots_of_the_reference_before_freeze_existed_restore_natively():
    """Entities pickled as the reference's `dump()` tuples (every snapshot before the native engine)."""
    plan = NAT["user"]
    ref = REF["user"].new_state()
    rnd = random.Random(5)
    for k in range(40):
        ref.apply_event(REF["user"], _click(rnd, T0 + k * 60_000), T0 + k * 60_000)
    old = pickle.dumps(ref.dump(), protocol=pickle.HIGHEST_PROTOCOL)
    assert plan.thaw(old).dump() == ref.dump() and plan.thaw(ref.dump()).dump() == ref.dump()


@given(st.lists(st.one_of(st.text(max_size=12), st.integers(-5, 10**12), st.none()), max_size=60),
       st.integers(1, 20), st.booleans())
@settings(max_examples=80, deadline=None)
def test_compiled_routing_splits_a_batch_as_the_reference_does(ids, shards, cdc):
    """Same shards, same order, same entity ids (non-strings as `str`), for any id, ASCII or not."""
    for text in (i for i in ids if isinstance(i, str)):
        assert native_state.crc32(text) == zlib.crc32(text.encode())
    if cdc:
        records = [(k, {"op": "c", "before": None, "after": {"user_id": i}, "ts_ms": T0}) for k, i in enumerate(ids)]
    else:
        records = [(k, {"user_id": i, "ts": T0}) for k, i in enumerate(ids)]
    topic = CDC_USERS.name if cdc else CLICKSTREAM.name
    got = route(topic, records, 7, shards, 1, T0)  # the flow's plans: compiled
    with patch.dict(shard_module.PLANS, REF):  # the reference's loop
        want = route(topic, records, 7, shards, 1, T0)
    assert [(k, p.rows, p.shard, p.partition) for k, p in got] == [(k, p.rows, p.shard, p.partition) for k, p in want]
    assert all(isinstance(eid, str) for _, p in got for eid, _ in p.rows)


@given(st.lists(st.tuples(st.text(max_size=5), st.integers(0, 2**60), st.dictionaries(
    st.sampled_from(["clicks_5m", "views_1h", "tier", "spend_24h", "ctr_1h"]),
    st.one_of(st.floats(allow_nan=True), st.integers(-2**70, 2**70), st.text(max_size=8), st.booleans(), st.none()))),
    max_size=20), st.sampled_from(["", "blue"]))
@settings(max_examples=200, deadline=None)
def test_compiled_redis_commands_are_the_references_bytes(rows, namespace):
    """Floats by repr (nan, inf, -0.0 and all), the rest by str, JSON escaped as orjson does (quotes, backslashes,
    control characters, UTF-8), absent features listed in order; the EVALSHA framed as hiredis frames it."""
    from streams.features.keys import feature_key
    from streams.sinks import redis as redis_sink

    names = ["clicks_5m", "views_1h", "tier", "spend_24h", "ctr_1h", "last_event_ts"]
    payload = native_state.encode_payload(rows, names, 604_800_000)
    assert payload == redis_sink._encode_payload(rows, names, 604_800_000)
    prefix = feature_key("user", "", namespace)
    assert native_state.pack_cas_call(b"f" * 40, rows, prefix, payload) == redis_sink._pack_cas_call(
        b"f" * 40, rows, prefix, payload)


def test_compiled_payloads_escape_every_control_character():
    from streams.sinks import redis as redis_sink

    rows = [("u1", 7, {"tier": "".join(map(chr, range(0x80))) + 'é€😀"\\', "spend_24h": -0.0})]
    assert native_state.encode_payload(rows, ["tier"], 1) == redis_sink._encode_payload(rows, ["tier"], 1)


@given(st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=500, deadline=None)
def test_compiled_float_text_is_repr(value):
    assert native_state.float_repr(value) == repr(value)


def test_compiled_float_text_is_repr_over_random_bit_patterns_and_decimals():
    """Every exponent and digit count (fixed notation from 1e-4 up to 1e16, exponents from two to three digits)."""
    rnd = random.Random(7)
    values = [struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0] for _ in range(100_000)]
    values += [rnd.randrange(10**rnd.randrange(1, 18)) * 10.0 ** rnd.randrange(-25, 25) for _ in range(100_000)]
    values += [0.0, -0.0, 1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 5e-324, 1.7976931348623157e308]
    assert [v for v in values if native_state.float_repr(v) != repr(v)] == []


_ARENAS = """
import resource, sys
from streams.features import native_state
kept = native_state.keep_arenas(int(sys.argv[1]))
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    junk = [{"a": i, "b": str(i)} for i in range(200_000)]  # ~60 MB of small objects, then freed
    del junk
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, kept and native_state.keep_arenas(8), *faults)
"""


@pytest.mark.parametrize("keep", [0, 256])
def test_emptied_arenas_are_kept_for_reuse_so_their_pages_do_not_fault_again(keep):
    """Without the cache, every round of objects made and freed maps fresh arenas (the kernel zeroes each page); with
    it, only the first round faults. In a fresh interpreter: the allocator is process-wide and set once."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _ARENAS, str(keep)], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    kept, again, first, later = out[0], out[1], int(out[2]), [int(x) for x in out[3:]]
    assert (kept, again) == (str(keep > 0), "False")  # set once; a second call changes nothing
    assert first > 5_000  # the first round maps its arenas either way
    if keep:
        assert max(later) < first // 10
    else:
        assert min(later) > first // 2
