"""`TopicSerde.deserialize_many` gives, value by value, what `deserialize` gives: in bulk where it can,
one by one where it must, registry outages reported from where `deserialize` would raise them."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import HEADER_SIZE, AvroCodec, frame
from schemas.errors import DecodeError, RegistryError
from schemas.serde import BULK_MIN, Decoded, TopicSerde
from schemas.topics import CLICKSTREAM, PREDICTIONS
from tests.avro_cases import (
    CLICK_CODEC,
    CLICK_ID,
    FUZZ,
    PRED_CODEC,
    SAMPLE,
    ClickRegistry,
    click_record,
    corrupted,
    predictions,
    rows_of,
    text,
)
from tests.oracle import same

OLDER = {**PREDICTIONS.schema, "fields": [*PREDICTIONS.schema["fields"], {"name": "extra", "type": "string"}]}
OLDER_CODEC = AvroCodec(OLDER)
CONTRACT_ID, ALIAS_ID, OLDER_ID, BROKEN_ID, UNKNOWN_ID = 1, 2, 3, 4, 99


class MemoryRegistry:
    """Schema texts by id: the contract, the same text under a second id, a writer with one more field
    (resolved against the contract) and a text that does not parse."""

    def __init__(self) -> None:
        contract = json.dumps(PREDICTIONS.schema)
        self.schemas = {CONTRACT_ID: contract, ALIAS_ID: contract, OLDER_ID: json.dumps(OLDER), BROKEN_ID: "{not json"}
        self.lookups = 0

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return min(sid for sid, known in self.schemas.items() if known == text)

    def schema_by_id(self, schema_id: int) -> str | None:
        self.lookups += 1
        return self.schemas.get(schema_id)


def expected_of(value: bytes | None) -> dict[str, Any] | str:
    """What `deserialize` gives, by a fresh serde: the record, or the DecodeError's reason."""
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    try:
        return serde.deserialize(value)
    except DecodeError as exc:
        return exc.reason


def actual_of(out: Decoded, n: int) -> list[dict[str, Any] | str]:
    """Each index's outcome in `out`; every index in exactly one of columns, records, errors."""
    found: dict[int, dict[str, Any] | str] = {}
    for indices, batch in out.columns:
        assert batch.num_rows == len(indices)
        for i, row in zip(indices, rows_of(batch, PREDICTIONS.schema), strict=True):
            assert i not in found
            found[i] = row
    for i, record in out.records.items():
        assert i not in found
        found[i] = record
    for i, exc in out.errors.items():
        assert i not in found and isinstance(exc, DecodeError)
        found[i] = exc.reason
    assert sorted(found) == list(range(n))
    return [found[i] for i in range(n)]


def assert_as_deserialize(values: list[bytes | None], out: Decoded) -> None:
    actual = actual_of(out, len(values))
    for i, (got, value) in enumerate(zip(actual, values, strict=True)):
        want = expected_of(value)
        assert same(got, want), (i, value if value is None else value.hex(), got, want)
    assert same([o.reason if isinstance(o, DecodeError) else o for o in out.outcomes(len(values))], actual)


@st.composite
def values_strategy(draw: st.DrawFn) -> list[bytes | None]:
    out: list[bytes | None] = []
    goods = [PRED_CODEC.encode(r) for r in draw(st.lists(predictions, min_size=1, max_size=6))]
    for _ in range(draw(st.integers(0, 24))):
        kind = draw(st.sampled_from(["good", "good", "good", "alias", "older", "none", "short", "magic", "unknown",
                                     "broken", "corrupt", "shift"]))
        body = draw(st.sampled_from(goods))
        if kind == "good":
            out.append(frame(CONTRACT_ID, body))
        elif kind == "alias":
            out.append(frame(ALIAS_ID, body))
        elif kind == "older":
            out.append(frame(OLDER_ID, OLDER_CODEC.encode({**PRED_CODEC.decode(body), "extra": draw(text)})))
        elif kind == "none":
            out.append(None)
        elif kind == "short":
            out.append(draw(st.binary(max_size=HEADER_SIZE)))
        elif kind == "magic":
            out.append(bytes([draw(st.integers(1, 255))]) + struct.pack(">I", CONTRACT_ID) + body)
        elif kind == "unknown":
            out.append(frame(UNKNOWN_ID, body))
        elif kind == "broken":
            out.append(frame(BROKEN_ID, body))
        elif kind == "shift":  # two values whose bodies together are two good bodies, split elsewhere
            both = body + draw(st.sampled_from(goods))
            cut = len(body) + draw(st.integers(-len(body) + 1, len(both) - len(body) - 1).filter(bool))
            out += [frame(CONTRACT_ID, both[:cut]), frame(CONTRACT_ID, both[cut:])]
        else:
            out.append(frame(CONTRACT_ID, draw(corrupted([body], [CLICK_CODEC.encode(SAMPLE["clickstream"])]))[0]))
    return out


@FUZZ
@given(values=values_strategy(), bulk_min=st.integers(1, 8))
def test_deserialize_many_gives_for_each_value_what_deserialize_gives(values: list[bytes | None], bulk_min: int) -> None:
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    assert_as_deserialize(values, serde.deserialize_many(values, bulk_min=bulk_min))
    assert_as_deserialize(values, serde.deserialize_many(values, bulk_min=bulk_min))  # with warm caches


def _goods(n: int, schema_id: int = CONTRACT_ID) -> list[bytes | None]:
    return [frame(schema_id, PRED_CODEC.encode({**SAMPLE["predictions"], "prediction_id": f"p{i}", "ts": i,
                                                "features": {"user.views_1h": float(i), "x": None, "s": str(i)}}))
            for i in range(n)]


def test_deserialize_many_decodes_a_large_group_of_the_contract_schema_in_bulk() -> None:
    body = PRED_CODEC.encode(SAMPLE["predictions"])
    values = _goods(70) + [None, b"\x00\x00", b"\x07" + body, frame(UNKNOWN_ID, body), frame(BROKEN_ID, body),
                           frame(OLDER_ID, OLDER_CODEC.encode({**SAMPLE["predictions"], "extra": "x"}))]
    values += _goods(5, ALIAS_ID)
    registry = MemoryRegistry()
    serde = TopicSerde(PREDICTIONS, registry)
    out = serde.deserialize_many(values, bulk_min=64)
    assert [indices for indices, _ in out.columns] == [list(range(70))]
    assert sorted(out.records) == [75, *range(76, 81)]
    assert {i: e.reason for i, e in out.errors.items()} == {70: "empty", 71: "truncated", 72: "bad_magic",
                                                            73: "unknown_schema", 74: "bad_writer_schema"}
    assert_as_deserialize(values, out)
    lookups = registry.lookups
    serde.deserialize_many(values, bulk_min=64)
    assert registry.lookups == lookups + 1  # only the broken id is looked up again (unknown ids are cached)


def test_deserialize_many_takes_the_bulk_path_from_bulk_min_on() -> None:
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    assert serde.deserialize_many(_goods(BULK_MIN - 1)).columns == []
    assert len(serde.deserialize_many(_goods(BULK_MIN - 1)).records) == BULK_MIN - 1
    out = serde.deserialize_many(_goods(BULK_MIN))
    assert [indices for indices, _ in out.columns] == [list(range(BULK_MIN))] and not out.records
    assert_as_deserialize(_goods(BULK_MIN), out)
    aliased = serde.deserialize_many(_goods(BULK_MIN, ALIAS_ID))  # the same schema under another id: bulk too
    assert [indices for indices, _ in aliased.columns] == [list(range(BULK_MIN))]


def test_the_bulk_decoder_can_be_built_ahead_and_is_the_one_used() -> None:
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    decoder = serde.bulk_decoder()  # what a long-running consumer does at start
    assert serde.bulk_decoder() is decoder
    calls: list[int] = []
    original = decoder.decode
    decoder.decode = lambda bodies: calls.append(len(bodies)) or original(bodies)  # type: ignore[method-assign]
    assert [indices for indices, _ in serde.deserialize_many(_goods(BULK_MIN)).columns] == [list(range(BULK_MIN))]
    assert calls == [BULK_MIN]


@pytest.mark.parametrize("damage", [lambda v: v + b"\x00", lambda v: v[:-1], lambda v: v[:-9],
                                    lambda v: v[:HEADER_SIZE] + CLICK_CODEC.encode(SAMPLE["clickstream"])])
def test_one_corrupt_value_among_a_hundred_sends_the_group_one_by_one(damage: Any) -> None:
    values = _goods(101)
    values[50] = damage(values[50])
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    out = serde.deserialize_many(values, bulk_min=64)
    assert out.columns == []
    assert sorted(out.records) == [i for i in range(101) if i != 50]
    assert list(out.errors) == [50] and out.errors[50].reason == "invalid_avro"
    assert_as_deserialize(values, out)


def test_two_values_whose_boundary_moved_are_decoded_one_by_one() -> None:
    values = _goods(100)
    both = values[40][HEADER_SIZE:] + values[41][HEADER_SIZE:]  # type: ignore[index]
    values[40], values[41] = frame(CONTRACT_ID, both[:-3]), frame(CONTRACT_ID, both[-3:])
    out = TopicSerde(PREDICTIONS, MemoryRegistry()).deserialize_many(values, bulk_min=64)
    assert out.columns == [] and sorted(out.errors) == [40, 41]
    assert_as_deserialize(values, out)


class CountingClickRegistry(ClickRegistry):
    def __init__(self, down_ids: set[int]) -> None:
        super().__init__(down_ids)
        self.lookups: list[int] = []

    def schema_by_id(self, schema_id: int) -> str | None:
        self.lookups.append(schema_id)
        return super().schema_by_id(schema_id)


def test_an_outage_is_reported_from_where_deserialize_would_raise_it() -> None:
    good = [frame(CLICK_ID, CLICK_CODEC.encode(click_record(i))) for i in range(70)]
    body = CLICK_CODEC.encode(click_record(0))
    down, unknown, later = 5, 6, 7
    values: list[bytes | None] = [*good[:30], None, frame(unknown, body), frame(down, body), *good[30:60],
                                  frame(later, body), frame(down, body), frame(unknown, body), *good[60:]]
    with pytest.raises(RegistryError):
        TopicSerde(CLICKSTREAM, ClickRegistry({down})).deserialize_many(values)
    one_by_one_serde, raised_at = TopicSerde(CLICKSTREAM, ClickRegistry({down})), None
    for i, value in enumerate(values):
        try:
            one_by_one_serde.deserialize(value)
        except RegistryError:
            raised_at = i
            break
        except DecodeError:
            pass
    registry = CountingClickRegistry({down})
    out = TopicSerde(CLICKSTREAM, registry).deserialize_many(values, bulk_min=64, report_outage=True)
    assert min(out.unavailable) == raised_at == 32
    assert sorted(out.unavailable) == [32, 63, 64]  # the down id's values and those of the id first met after it
    assert registry.lookups == [CLICK_ID, unknown, down]  # not asked again after it failed
    assert [i for indices, _ in out.columns for i in indices] == [i for i in range(len(values))
                                                                  if i not in (30, 31, 32, 63, 64, 65)]
    assert {i: e.reason for i, e in out.errors.items()} == {30: "empty", 31: "unknown_schema", 65: "unknown_schema"}
    outcomes = out.outcomes(len(values))
    assert all(isinstance(outcomes[i], RegistryError) for i in (32, 63, 64))
    assert outcomes[:30] == [CLICK_CODEC.decode(v[HEADER_SIZE:]) for v in good[:30]]  # type: ignore[index]
