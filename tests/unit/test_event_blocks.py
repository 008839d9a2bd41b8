"""The flow's columnar path (a poll's events kept as columns, `route_columns`, the compiled `fold_block`) leaves every
shard as the record path does (records, `route`, `fold_events`), batch after batch, also after crossing to
another process (pickled)."""

from __future__ import annotations

import json
import pickle
import random
import time
from typing import Any
from unittest.mock import patch

import pyarrow as pa
import pytest

from schemas import serde as serde_module
from schemas.codec import AvroCodec, frame
from schemas.serde import TopicSerde
from schemas.topics import CLICKSTREAM
from streams.features import shard as shard_module
from streams.features.shard import PLANS, ShardState, plan_columns, route_columns
from streams.features.state import native_state
from streams.flows.features import route_batch, source_fields
from streams.flows.source import read_poll

pytestmark = pytest.mark.skipif(native_state is None or any(p.native is None for p in PLANS.values()),
                                reason="the columnar path is the native engine's")
CODEC = AvroCodec(CLICKSTREAM.schema)
NOW = int(time.time() * 1000)
T0 = NOW - 2 * 3_600_000
LATENESS_MS = 120_000


class Registry:
    def register(self, subject: str, schema: Any) -> int:
        return 1

    def schema_by_id(self, schema_id: int) -> str | None:
        return json.dumps(CLICKSTREAM.schema)


class Msg:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, T0 + 60 * 60_000

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b""


def _clicks(seed: int, n: int) -> list[dict[str, Any]]:
    """Contract records of a few users and items, out of order within and beyond the lateness, every event type,
    items and prices missing (a click without an item is dead-lettered), sessions every half hour."""
    rnd, clock, out = random.Random(seed), T0, []
    for offset in range(n):
        clock += rnd.randint(-40_000, 60_000)
        ts = clock - (10 * LATENESS_MS if rnd.random() < 0.02 else 0)
        kind = rnd.choice(["page_view", "click", "add_to_cart", "purchase", "search"])
        item = None if kind == "search" or rnd.random() < 0.03 else f"i{rnd.randint(0, 8)}"
        out.append({"event_id": f"e{offset}", "user_id": f"u{rnd.randint(0, 25)}", "session_id": f"s{ts // 1_800_000}",
                    "event_type": kind, "item_id": item, "price": rnd.choice([None, 0.0, round(rnd.uniform(1, 99), 2)]),
                    "ts": ts, "page": "/", "referrer": None, "device": "mobile", "country": "DE", "props": {}})
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_shards_fed_columns_are_the_shards_fed_records(seed: int) -> None:
    rnd = random.Random(seed)
    msgs = [Msg(o, frame(1, CODEC.encode(r))) for o, r in enumerate(_clicks(seed, 1500))]
    fields = source_fields((CLICKSTREAM,))[CLICKSTREAM.name]
    options = {"period_ms": 300_000, "lateness_ms": LATENESS_MS}
    shards: dict[bool, dict[str, ShardState]] = {True: {}, False: {}}
    highs: dict[bool, int | None] = {True: None, False: None}
    blocks = 0
    i = 0
    with patch.object(serde_module, "BULK_MIN", 1):
        while i < len(msgs):
            poll = msgs[i:i + rnd.choice([1, 9, 120, 400])]
            i += len(poll)
            out = {}
            for columnar in (True, False):
                read = read_poll(CLICKSTREAM, 0, TopicSerde(CLICKSTREAM, Registry()), True, LATENESS_MS,
                                 highs[columnar], poll, NOW, fields, columnar)
                highs[columnar] = read.high
                got = []
                for key, routed in route_batch(read.batch, 4):
                    blocks += columnar and routed.block is not None
                    part = pickle.loads(pickle.dumps(routed))  # as Bytewax hands it to another process
                    state = shards[columnar].setdefault(key, ShardState(part.entity, **options))
                    state.clock = i
                    writes = state.apply([part])
                    state.freeze_some(i % 5, i - 100)
                    got.append((key, writes.rows, [(w.window_start, w.rows) for w in state.close_windows()]))
                out[columnar] = sorted(got, key=lambda g: g[0])
            assert out[True] == out[False]
    assert blocks > 0
    assert shards[True].keys() == shards[False].keys()
    for key, state in shards[True].items():
        other = shards[False][key]
        assert {k: s.dump() for k, s in state.states.items()} == {k: s.dump() for k, s in other.states.items()}
        assert state.pending == other.pending and state.high == other.high


def test_columns_a_plan_cannot_be_read_from_go_the_record_way() -> None:
    """A filter pyarrow will not compare as Python does (here an event type stored as a number) is no error: that
    entity's events are routed as records, which the fold compares one by one."""
    table = pa.RecordBatch.from_pydict({"user_id": ["u1", "u2"], "item_id": ["i1", None], "event_type": [1, 2],
                                        "ts": [T0, T0 + 1], "price": [1.0, None], "session_id": ["s", "s"]})
    assert plan_columns(PLANS["user"], table) is None
    routed = route_columns(CLICKSTREAM.name, table, 0, 2)
    assert routed and all(part.block is None and part.rows for _, part in routed)
    assert sorted(eid for _, part in routed if part.entity == "user" for eid, _ in part.rows) == ["u1", "u2"]
    with patch.object(shard_module, "plan_columns", return_value=None):
        assert all(part.block is None for _, part in route_columns(CLICKSTREAM.name, table, 0, 2))
