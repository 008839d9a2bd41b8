"""Entity state equals the brute-force oracle on generated events, in both engines (the compiled one the flow
runs by default and the pure-Python reference); the reference's compiled appliers equal its interpreted plan."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.topics import CDC_USERS, CLICKSTREAM
from streams.features.definitions import ENTITIES, ITEM, USER, features_of
from streams.features.state import NOT_NULL, EntityPlan, EntityState, engine_from_env, native_state
from tests.oracle import expected_features

PLANS = {e.name: EntityPlan(e, engine="python") for e in ENTITIES}  # the reference
ENGINES = ["python"] + (["native"] if native_state is not None else [])
ENGINE_PLANS = {engine: {e.name: EntityPlan(e, engine=engine) for e in ENTITIES} for engine in ENGINES}
T0 = 1_700_000_000_000


def _event(rnd: random.Random, ts: int, user: str) -> dict:
    kind = rnd.choice(["page_view", "click", "add_to_cart", "purchase", "search"])
    item = None if kind == "search" else f"i{rnd.randint(0, 5)}"
    price = round(rnd.uniform(1, 100), 2) if item and rnd.random() < 0.8 else None
    return {"event_type": kind, "user_id": user, "item_id": item, "price": price, "ts": ts,
            "session_id": f"s{ts // 1_800_000}"}


def _fold(accepted, plans=PLANS):
    states: dict[tuple[str, str], object] = {}
    for topic, event in accepted:
        for entity in ENTITIES:
            field = entity.id_field(topic)
            if field is None:
                continue
            plan = plans[entity.name]
            if topic == CLICKSTREAM.name:
                key = event.get(field)
                if key is None:
                    continue
                state = states.setdefault((entity.name, key), plan.new_state())
                state.apply_event(plan, event, event["ts"])
            else:
                row = event["after"] or event["before"]
                state = states.setdefault((entity.name, row[field]), plan.new_state())
                state.apply_change(plan, topic, event["op"], event["after"], event["ts_ms"])
    return {k: {**s.values(plans[k[0]]), "_ts": s.ts} for k, s in states.items()}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].keys() == want[key].keys(), key
        for name, value in want[key].items():
            assert got[key][name] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, name)


@pytest.mark.parametrize("engine", ENGINES)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 300), jitter=st.integers(0, 3_600_000))
@settings(max_examples=60, deadline=None)
def test_user_and_item_features_equal_the_oracle_for_out_of_order_streams(engine, seed, n, jitter):
    rnd = random.Random(seed)
    accepted = []
    for i in range(n):
        ts = T0 + i * rnd.randint(0, 120_000) - rnd.randint(0, jitter)
        accepted.append((CLICKSTREAM.name, _event(rnd, ts, f"u{rnd.randint(0, 3)}")))
    _assert_same(_fold(accepted, ENGINE_PLANS[engine]), expected_features(accepted))


@pytest.mark.parametrize("engine", ENGINES)
def test_cdc_sets_attributes_delete_removes_them_and_age_uses_latest_event_time(engine):
    plans = ENGINE_PLANS[engine]
    signup = T0 - 10 * 86_400_000 - 5
    create = {"op": "c", "before": None, "after": {"user_id": "u1", "tier": "plus", "country": "DE",
              "signup_ts": signup, "marketing_opt_in": True}, "ts_ms": T0}
    click = {"event_type": "click", "user_id": "u1", "item_id": "i1", "price": None, "ts": T0 + 86_400_000,
             "session_id": "s"}
    values = _fold([(CDC_USERS.name, create), (CLICKSTREAM.name, click)], plans)[("user", "u1")]
    assert (values["tier"], values["country"], values["account_age_days"]) == ("plus", "DE", 11)
    delete = {"op": "d", "before": create["after"], "after": None, "ts_ms": T0 + 1}
    values = _fold([(CDC_USERS.name, create), (CLICKSTREAM.name, click), (CDC_USERS.name, delete)], plans)[("user", "u1")]
    assert "tier" not in values and "account_age_days" not in values and values["clicks_5m"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_ctr_is_clicks_over_views_and_zero_without_views(engine):
    plans = ENGINE_PLANS[engine]
    events = [{"event_type": t, "user_id": "u", "item_id": "i", "price": None, "ts": T0 + k, "session_id": "s"}
              for k, t in enumerate(["page_view", "page_view", "page_view", "page_view", "click"])]
    assert _fold([(CLICKSTREAM.name, e) for e in events], plans)[("item", "i")]["ctr_1h"] == 0.25
    only_click = _fold([(CLICKSTREAM.name, events[-1])], plans)[("item", "i")]
    assert only_click["ctr_1h"] == 0.0


def test_the_native_engine_is_built(monkeypatch):
    """`pip install` builds it when a C++ compiler is present (.ci/run installs g++): the flow's speed needs it.
    (Here, not in test_native_state.py, whose tests are skipped when it is missing.)"""
    assert native_state is not None, "streams/features/native_state.pyx was not built: apt-get install g++, then " \
                                     "pip install -e . again"
    monkeypatch.delenv("STREAMML_FEATURES_ENGINE", raising=False)  # the default picks it
    assert engine_from_env() == "native"


def test_plans_cover_every_feature_once():
    for entity in (USER, ITEM):
        plan = PLANS[entity.name]
        assert [f for f, _ in plan.outputs] == list(features_of(entity))


def _matches(event: dict, where: tuple) -> bool:
    for name, expected in where:
        value = event.get(name)
        if expected is NOT_NULL:
            if value is None:
                return False
        elif value != expected:
            return False
    return True


def apply_interpreted(state: EntityState, plan: EntityPlan, event: dict, ts: int) -> None:
    """`EntityState.apply_event` by interpreting the plan column by column: the reference the compiled code must equal."""
    if ts >= state.t:
        state.t = ts
        if plan.session_field is not None:
            state.session = event.get(plan.session_field)
    t = state.t
    windows, rows = plan.tile_windows, state.rows
    for c in plan.columns_for(event.get("event_type")):
        if c.where and not _matches(event, c.where):
            continue
        row = windows[c.slot].row_for(rows[c.slot], ts, t)
        if row is None:
            continue
        if c.value_field is None:
            row[c.col] += 1.0
        else:
            value = event.get(c.value_field)
            if value is not None:
                row[c.col] += value
    for (f, _), window, seen in zip(plan.distinct, plan.distinct_windows, state.seen):
        value = event.get(f.value_field)
        if value is not None:
            window.add(seen, value, ts, t)
    if plan.session_field is not None:
        sid = event.get(plan.session_field)
        if sid is not None:
            entry = state.sessions.get(sid)
            if entry is None:
                state.sessions[sid] = [1, ts]
            else:
                entry[0] += 1
                if ts > entry[1]:
                    entry[1] = ts


@given(st.integers(0, 2**32), st.integers(1, 200), st.integers(0, 3 * 86_400_000))
@settings(max_examples=60, deadline=None)
def test_compiled_apply_leaves_exactly_the_state_the_interpreted_plan_leaves(seed, n, spread):
    """Same tiles, distinct sets, sessions and times, bit for bit, whatever the event types (unknown and
    missing ones too), null prices and fields, and out-of-order or out-of-window times."""
    rnd = random.Random(seed)
    for plan in PLANS.values():
        compiled, interpreted = plan.new_state(), plan.new_state()
        for _ in range(n):
            event = _event(rnd, T0 + rnd.randint(0, spread), "u1")
            if rnd.random() < 0.1:
                event["event_type"] = rnd.choice([None, "refund", 3])
            if rnd.random() < 0.1:
                del event[rnd.choice(["price", "item_id", "session_id", "event_type"])]
            compiled.apply_event(plan, event, event["ts"])
            apply_interpreted(interpreted, plan, event, event["ts"])
        assert compiled.dump() == interpreted.dump()
        assert compiled.values(plan) == interpreted.values(plan)
