"""The flow keeps only some fields of the records it decodes in bulk (`source_fields`): validation, routing and the
feature state must read no others, or a dropped field would silently read as missing. These tests watch every read."""

from __future__ import annotations

import random
import time
from typing import Any
from unittest.mock import patch

import pytest

from schemas.errors import ValidationError
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM
from schemas.validation import fields_read, validate
from streams.features import shard as shard_module
from streams.features.definitions import ENTITIES
from streams.features.shard import EVENT_FIELDS, ShardState, route
from streams.features.state import EntityPlan, native_state
from streams.flows.features import source_fields

NOW = int(time.time() * 1000)
KINDS = ["page_view", "click", "add_to_cart", "purchase", "search", "refund", None]


class Watched(dict):
    """A record that remembers which fields were read (reading it whole counts as reading every field)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.read.update(self.keys())
        return super().__iter__()


def _event(rnd: random.Random, n: int) -> dict[str, Any]:
    kind = rnd.choice(KINDS)
    event = {"event_id": f"e{n}", "user_id": rnd.choice(["u1", "u2", "u3", ""]), "session_id": rnd.choice(["s1", "s2"]),
             "event_type": kind, "item_id": rnd.choice([None, "i1", "i2", "i3"]),
             "price": rnd.choice([None, 3.5, -1.0, 2e9, 12.25]), "ts": NOW - rnd.randrange(-2, 3) * 3_000_000,
             "page": "/p", "referrer": None, "device": "mobile", "country": "DE", "props": {"k": "v"}}
    if rnd.random() < 0.1:
        event["ts"] = rnd.choice([5, "later"])
    if rnd.random() < 0.1:
        del event[rnd.choice(["price", "item_id", "session_id"])]
    return event


def test_validation_reads_only_the_fields_it_declares() -> None:
    rnd, reasons, allowed = random.Random(3), set(), fields_read(CLICKSTREAM)
    for n in range(2000):
        record = Watched(_event(rnd, n))
        try:
            validate(CLICKSTREAM, record, NOW)
        except ValidationError as exc:
            reasons.add(exc.reason)
        assert record.read <= allowed, record.read - allowed
    # every rule had its turn
    assert reasons >= {"bad_timestamp", "future_timestamp", "missing_key", "bad_price", "missing_item"}
    assert fields_read(CDC_USERS) is None and fields_read(CDC_ITEMS) is None


@pytest.mark.parametrize("engine", ["python", "native"])
def test_routing_and_the_feature_state_read_only_the_event_fields(engine: str) -> None:
    """The reference reads through `get` and `[]`, so it is watched; the compiled engine reads the dict directly, so
    it is fed the same events with only those fields and must give what the reference gives with every field."""
    if engine == "native" and native_state is None:
        pytest.skip("the native engine was not built")
    rnd = random.Random(5)
    events = [_event(rnd, n) for n in range(3000)]
    events = [e for e in events if isinstance(e["ts"], int) and e["user_id"]]
    allowed = EVENT_FIELDS[CLICKSTREAM.name]
    ref = {e.name: EntityPlan(e, engine="python") for e in ENTITIES}

    def run(records: list[dict[str, Any]], plans: dict[str, EntityPlan]) -> list:
        states, out = {}, []
        with patch.dict(shard_module.PLANS, plans):
            for start in range(0, len(records), 500):
                batch = [(n, r) for n, r in enumerate(records[start:start + 500])]
                for key, part in route(CLICKSTREAM.name, batch, NOW, 4, 0, NOW):
                    state = states.setdefault(key, ShardState(part.entity, plan=plans[part.entity]))
                    out.append((key, state.apply([part]).rows, state.close_windows(force=True)))
        return out

    watched = [Watched(e) for e in events]
    want = run(watched, ref)
    assert set().union(*(w.read for w in watched)) <= allowed
    if engine == "native":
        nat = {e.name: EntityPlan(e, engine="native") for e in ENTITIES}
        assert run([{k: v for k, v in e.items() if k in allowed} for e in events], nat) == want


def test_the_flow_keeps_what_validation_routing_and_state_read() -> None:
    fields = source_fields((CLICKSTREAM, CDC_USERS, CDC_ITEMS))
    assert fields == {CLICKSTREAM.name: fields_read(CLICKSTREAM) | EVENT_FIELDS[CLICKSTREAM.name]}  # CDC: whole
    assert {"page", "props", "event_id"}.isdisjoint(fields[CLICKSTREAM.name])
