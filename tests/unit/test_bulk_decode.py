"""Bulk Avro decoding (arrow-avro) against fastavro one by one: same rows, or a refusal, never another answer."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.bulk import BulkDecoder, BulkUnsupported, encoded_sizes, records_of
from schemas.codec import HEADER_SIZE, AvroCodec, frame
from schemas.errors import DecodeError, RegistryError
from schemas.serde import Decoded, TopicSerde
from schemas.topics import CDC_ITEMS, CLICKSTREAM, PREDICTIONS
from tests.oracle import same

PRED_CODEC = AvroCodec(PREDICTIONS.schema)
CLICK_CODEC = AvroCodec(CLICKSTREAM.schema)
PRED_BULK = BulkDecoder(PREDICTIONS.schema)
CLICK_BULK = BulkDecoder(CLICKSTREAM.schema)
CDC_CODEC = AvroCodec(CDC_ITEMS.schema)
CDC_BULK = BulkDecoder(CDC_ITEMS.schema)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(SETTINGS, max_examples=150)

# ---------------------------------------------------------------------------------------------- strategies

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
long_text = st.one_of(text, text.map(lambda t: (t + "é") * 40))  # >= 80 bytes: a 2-byte length
big_map = st.integers(64, 66).map(lambda n: {f"k{i}": "v" * (i % 3) for i in range(n)})  # a 2-byte count
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308]))
longs = st.one_of(st.sampled_from([-(2**63), 2**63 - 1, 0, -1, 1, 63, 64, -64, -65, 2**31, -(2**31) - 1]),
                  st.integers(-(2**63), 2**63 - 1))

predictions = st.fixed_dictionaries({
    "prediction_id": long_text,
    "model": text,
    "model_version": text,
    "entities": st.one_of(st.dictionaries(text, text, max_size=3), big_map),
    "features": st.dictionaries(text, st.one_of(st.none(), doubles, text), max_size=6),
    "score": doubles,
    "ts": longs,
    "latency_ms": doubles,
})

clicks = st.fixed_dictionaries({
    "event_id": text,
    "user_id": text,
    "session_id": text,
    "event_type": st.sampled_from(["page_view", "click", "add_to_cart", "purchase", "search"]),
    "item_id": st.one_of(st.none(), text),
    "price": st.one_of(st.none(), doubles),
    "ts": longs,
    "page": long_text,
    "referrer": st.one_of(st.none(), text),
    "device": st.sampled_from(["desktop", "mobile", "tablet", "other"]),
    "country": text,
    "props": st.dictionaries(text, text, max_size=4),
})

item_rows = st.fixed_dictionaries({
    "item_id": text,
    "category": st.one_of(st.none(), text),
    "price": st.one_of(st.none(), doubles),
    "brand": st.one_of(st.none(), long_text),
})

changes = st.fixed_dictionaries({  # nullable unions in records, and records in nullable unions
    "before": st.one_of(st.none(), item_rows),
    "after": st.one_of(st.none(), item_rows),
    "source": st.fixed_dictionaries({
        "version": text, "connector": text, "name": text, "ts_ms": longs, "snapshot": st.one_of(st.none(), text),
        "db": text, "schema": st.one_of(st.none(), text), "table": text, "txId": st.one_of(st.none(), longs),
        "lsn": st.one_of(st.none(), longs), "pos": st.one_of(st.none(), longs),
    }),
    "op": st.sampled_from(["c", "u", "d", "r"]),
    "ts_ms": longs,
})

# Not a contract schema: nullable unions with null second, one holding a record that holds two more.
NULL_LAST = {"type": "record", "name": "NullLast", "fields": [
    {"name": "a", "type": ["long", "null"]},
    {"name": "s", "type": ["string", "null"]},
    {"name": "inner", "type": [{"type": "record", "name": "Inner", "fields": [
        {"name": "x", "type": ["null", "double"]},
        {"name": "e", "type": [{"type": "enum", "name": "Side", "symbols": ["buy", "sell"]}, "null"]},
    ]}, "null"]},
    {"name": "m", "type": {"type": "map", "values": "long"}},
    {"name": "tail", "type": ["null", "long"]},
]}
NULL_LAST_CODEC = AvroCodec(NULL_LAST)
NULL_LAST_BULK = BulkDecoder(NULL_LAST)

null_last = st.fixed_dictionaries({
    "a": st.one_of(st.none(), longs),
    "s": st.one_of(st.none(), long_text),
    "inner": st.one_of(st.none(), st.fixed_dictionaries({
        "x": st.one_of(st.none(), doubles), "e": st.one_of(st.none(), st.sampled_from(["buy", "sell"]))})),
    "m": st.dictionaries(text, longs, max_size=3),
    "tail": st.one_of(st.none(), longs),
})

# Not a contract schema: the other types the size rule covers (enum, int, boolean, float, bytes, fixed, array).
MIXED = {"type": "record", "name": "Mixed", "fields": [
    {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["red", "green", "blue"]}},
    {"name": "i", "type": "int"},
    {"name": "b", "type": "boolean"},
    {"name": "f", "type": "float"},
    {"name": "raw", "type": "bytes"},
    {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
    {"name": "xs", "type": {"type": "array", "items": "long"}},
    {"name": "m", "type": {"type": "map", "values": ["null", "double", "string"]}},
]}
MIXED_CODEC = AvroCodec(MIXED)
MIXED_BULK = BulkDecoder(MIXED)

mixed = st.fixed_dictionaries({
    "e": st.sampled_from(["red", "green", "blue"]),
    "i": st.one_of(st.sampled_from([-(2**31), 2**31 - 1, 0, -1]), st.integers(-(2**31), 2**31 - 1)),
    "b": st.booleans(),
    "f": st.floats(width=32),
    "raw": st.one_of(st.binary(max_size=8), st.binary(max_size=8).map(lambda b: b * 8 + bytes(64))),
    "fx": st.binary(min_size=4, max_size=4),
    "xs": st.one_of(st.lists(longs, max_size=5), longs.map(lambda v: [v] * 65)),
    "m": st.dictionaries(text, st.one_of(st.none(), doubles, text), max_size=4),
})

KINDS = {  # name -> (codec, bulk decoder, record strategy, codec/strategy of another schema)
    "predictions": (PRED_CODEC, PRED_BULK, predictions, CLICK_CODEC, clicks),
    "clickstream": (CLICK_CODEC, CLICK_BULK, clicks, PRED_CODEC, predictions),
    "cdc": (CDC_CODEC, CDC_BULK, changes, PRED_CODEC, predictions),
    "null_last": (NULL_LAST_CODEC, NULL_LAST_BULK, null_last, PRED_CODEC, predictions),
    "mixed": (MIXED_CODEC, MIXED_BULK, mixed, PRED_CODEC, predictions),
}

# ---------------------------------------------------------------------------------------------- helpers



def _map_fields(schema: dict[str, Any]) -> list[str]:
    return [f["name"] for f in schema["fields"] if isinstance(f["type"], dict) and f["type"]["type"] == "map"]


def rows_of(batch: pa.RecordBatch, schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch's rows as fastavro would give them: maps (lists of pairs in Arrow) as dicts."""
    maps = _map_fields(schema)
    rows = batch.to_pylist()
    for row in rows:
        for name in maps:
            row[name] = dict(row[name])
    return rows


def one_by_one(codec: AvroCodec, body: bytes) -> dict[str, Any] | DecodeError:
    try:
        return codec.decode(body)
    except DecodeError as exc:
        return exc


@st.composite
def corrupted(draw: st.DrawFn, bodies: list[bytes], others: list[bytes]) -> list[bytes]:
    """`bodies` with one to three random corruptions."""
    bodies = list(bodies)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(bodies) - 1))
        body = bodies[i]
        kind = draw(st.sampled_from(["append", "truncate", "flip", "replace", "insert", "delete", "splice",
                                     "other", "duplicate", "shift", "shift"]))
        if kind == "append":
            body = body + draw(st.binary(min_size=1, max_size=4))
        elif kind == "truncate" and body:
            body = body[:draw(st.integers(0, len(body) - 1))]
        elif kind in ("flip", "replace", "delete") and body:
            pos = draw(st.integers(0, len(body) - 1))
            if kind == "flip":
                byte = body[pos] ^ (1 << draw(st.integers(0, 7)))
            elif kind == "replace":
                byte = draw(st.integers(0, 255))
            body = body[:pos] + (b"" if kind == "delete" else bytes([byte])) + body[pos + 1:]
        elif kind == "insert":
            pos = draw(st.integers(0, len(body)))
            body = body[:pos] + draw(st.binary(min_size=1, max_size=2)) + body[pos:]
        elif kind == "splice":
            donor = bodies[draw(st.integers(0, len(bodies) - 1))]
            body = body[:draw(st.integers(0, len(body)))] + donor[draw(st.integers(0, len(donor))):]
        elif kind == "other":
            body = draw(st.sampled_from(others))
        elif kind == "duplicate":  # one body twice, glued
            body = body + body
        elif kind == "shift" and i + 1 < len(bodies):  # the boundary with the next body moves: same bytes in all
            cut = len(body) + draw(st.integers(-len(body), len(bodies[i + 1])).filter(bool))
            both = body + bodies[i + 1]
            body, bodies[i + 1] = both[:cut], both[cut:]
        bodies[i] = body
    return bodies


# ---------------------------------------------------------------------------------------------- BulkDecoder


@pytest.mark.parametrize("kind", sorted(KINDS))
@SETTINGS
@given(data=st.data())
def test_bulk_rows_equal_one_by_one_decoding(kind: str, data: st.DataObject) -> None:
    codec, bulk, records, _, _ = KINDS[kind]
    batch_records = data.draw(st.lists(records, min_size=1, max_size=12))
    bodies = [codec.encode(r) for r in batch_records]
    batch = bulk.decode(bodies)
    assert batch is not None, "valid bodies written by fastavro must decode in bulk"
    assert batch.num_rows == len(bodies)
    rows = rows_of(batch, codec.schema)
    for row, body, record in zip(rows, bodies, batch_records, strict=True):
        expected = codec.decode(body)
        assert same(row, expected), (row, expected)
        assert same(row, record)  # and fastavro round-trips the record itself
    assert list(encoded_sizes(bulk.schema, pa.StructArray.from_arrays(batch.columns, names=batch.schema.names))) \
        == [len(b) for b in bodies]


@pytest.mark.parametrize("kind", sorted(KINDS))
@SETTINGS
@given(data=st.data())
def test_records_of_a_batch_are_what_one_by_one_decoding_gives(kind: str, data: st.DataObject) -> None:
    codec, bulk, records, _, _ = KINDS[kind]
    bodies = [codec.encode(r) for r in data.draw(st.lists(records, min_size=1, max_size=12))]
    batch = bulk.decode(bodies)
    assert batch is not None
    expected = [codec.decode(body) for body in bodies]
    got = records_of(batch)
    assert same(got, expected), (got, expected)  # same types too: str for enums, dict for maps, int, float, None
    start = data.draw(st.integers(0, len(bodies) - 1))
    assert same(records_of(batch.slice(start, 3)), expected[start:start + 3])
    if kind == "clickstream":  # every map a dict of its own, empty ones too
        assert len({id(record["props"]) for record in got}) == len(got)


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_bulk_decoding_of_corrupt_bodies_refuses_or_agrees_with_one_by_one(kind: str, data: st.DataObject) -> None:
    codec, bulk, records, other_codec, other_records = KINDS[kind]
    good = [codec.encode(r) for r in data.draw(st.lists(records, min_size=1, max_size=8))]
    others = [other_codec.encode(r) for r in data.draw(st.lists(other_records, min_size=1, max_size=2))]
    bodies = data.draw(corrupted(good, others))
    batch = bulk.decode(bodies)
    if batch is None:
        return
    assert batch.num_rows == len(bodies)
    for row, body in zip(rows_of(batch, codec.schema), bodies, strict=True):
        expected = one_by_one(codec, body)
        assert not isinstance(expected, DecodeError), f"bulk accepted {body.hex()} which fastavro rejects: {expected}"
        assert same(row, expected), (body.hex(), row, expected)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bulk_refuses_bodies_that_one_by_one_decoding_rejects(kind: str) -> None:
    codec, bulk, _, other_codec, _ = KINDS[kind]
    body = codec.encode(_SAMPLE[kind])
    other = other_codec.encode(_SAMPLE["clickstream" if kind == "predictions" else "predictions"])
    for bad in (body + b"\x00", body[:-1], b"", other, body + body):
        assert isinstance(one_by_one(codec, bad), DecodeError)
        assert bulk.decode([body, bad, body]) is None
        assert bulk.decode([bad]) is None
    assert bulk.decode([]) is None
    for cut in (1, len(body) - 1, len(body) + 1):  # the bytes of two good bodies, split at the wrong place
        pair = [(body + body)[:cut], (body + body)[cut:]]
        assert all(isinstance(one_by_one(codec, b), DecodeError) for b in pair)
        assert bulk.decode([body, *pair]) is None


_SAMPLE = {
    "predictions": {"prediction_id": "p1", "model": "ranker", "model_version": "v1", "entities": {"user": "u1"},
                    "features": {"user.views_1h": 3.0, "request.device": "mobile", "user.tier": None},
                    "score": 0.25, "ts": 1_700_000_000_000, "latency_ms": 1.5},
    "mixed": {"e": "blue", "i": -7, "b": False, "f": 0.5, "raw": b"\x00", "fx": b"abcd", "xs": [2**40],
              "m": {"k": None}},
    "clickstream": {"event_id": "e1", "user_id": "u1", "session_id": "s1", "event_type": "purchase", "item_id": "i9",
                    "price": 19.99, "ts": 1_700_000_000_123, "page": "/item/i9", "referrer": None,
                    "device": "mobile", "country": "DE", "props": {"ab": "b"}},
    "cdc": {"before": None, "after": {"item_id": "i9", "category": "toys", "price": None, "brand": "acme"},
            "source": {"version": "1", "connector": "pg", "name": "shop", "ts_ms": 1_700_000_000_000, "snapshot": None,
                       "db": "shop", "schema": "public", "table": "items", "txId": 7, "lsn": None, "pos": 3},
            "op": "c", "ts_ms": 1_700_000_000_001},
    "null_last": {"a": 5, "s": None, "inner": {"x": None, "e": "sell"}, "m": {"k": 1}, "tail": None},
}


def _zigzag(n: int) -> bytes:
    n, out = (n << 1) ^ (n >> 63), bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _click(i: int, **fields: Any) -> dict[str, Any]:
    symbols = CLICKSTREAM.schema["fields"][3]["type"]["symbols"]
    devices = CLICKSTREAM.schema["fields"][9]["type"]["symbols"]
    return {**_SAMPLE["clickstream"], "event_id": f"e{i}", "user_id": f"ü{i % 7}", "event_type": symbols[i % len(symbols)],
            "item_id": None if i % 3 == 0 else f"i{i}", "price": None if i % 2 else i * 0.5, "ts": 1_700_000_000_000 + i,
            "referrer": None if i % 5 else "https://ex.ample/é", "device": devices[i % len(devices)],
            "props": {f"k{j}": str(i * j) for j in range(i % 4)}, **fields}


def test_clickstream_records_decode_in_bulk_as_fastavro_decodes_them() -> None:
    records = [_click(i) for i in range(40)]
    bodies = [CLICK_CODEC.encode(r) for r in records]
    batch = CLICK_BULK.decode(bodies)
    assert batch is not None
    got = records_of(batch)
    assert got == [CLICK_CODEC.decode(b) for b in bodies] == records
    assert {r["event_type"] for r in got} == set(CLICKSTREAM.schema["fields"][3]["type"]["symbols"])
    assert {r["device"] for r in got} == set(CLICKSTREAM.schema["fields"][9]["type"]["symbols"])
    assert {type(r["item_id"]) for r in got} == {str, type(None)} and {type(r["price"]) for r in got} == {float, type(None)}
    assert max(len(r["props"]) for r in got) == 3 and min(len(r["props"]) for r in got) == 0


def _item_id_index(body: bytes) -> int:
    """Where item_id's branch index is in a clickstream body: after three strings and the enum."""
    pos = 0
    for _ in range(3):
        pos += 1 + body[pos] // 2  # short strings here: a one-byte length
    return pos + 1


CLICK_ID = 1


class ClickRegistry:
    """The clickstream contract under CLICK_ID; looking up any of `down_ids` fails (registry down)."""

    def __init__(self, down_ids: set[int] | None = None) -> None:
        self.down_ids = down_ids or set()

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        return CLICK_ID

    def schema_by_id(self, schema_id: int) -> str | None:
        if schema_id in self.down_ids:
            raise RegistryError("registry down")
        return json.dumps(CLICKSTREAM.schema) if schema_id == CLICK_ID else None


@pytest.mark.parametrize("null_item", [False, True])
@pytest.mark.parametrize("byte", [0x04, 0x01])
def test_a_corrupt_branch_index_sends_the_batch_one_by_one(byte: int, null_item: bool) -> None:
    bodies = [CLICK_CODEC.encode(_click(i, item_id=None if null_item else "x1")) for i in range(100)]
    pos = _item_id_index(bodies[37])
    assert bodies[37][pos] == (0x00 if null_item else 0x02)
    bodies[37] = bodies[37][:pos] + bytes([byte]) + bodies[37][pos + 1:]
    assert CLICK_BULK.decode(bodies) is None
    assert CLICK_BULK.decode(bodies[:37] + bodies[38:]) is not None
    values = [frame(CLICK_ID, b) for b in bodies]
    serde = TopicSerde(CLICKSTREAM, ClickRegistry())
    out = serde.deserialize_many(values)
    assert out.columns == [] and sorted([*out.records, *out.errors]) == list(range(100))
    outcomes = out.outcomes(100)
    for i, value in enumerate(values):
        try:
            want: Any = serde.deserialize(value)
        except DecodeError as exc:
            want = exc.reason
        got = outcomes[i].reason if isinstance(outcomes[i], DecodeError) else outcomes[i]
        assert same(got, want), (i, got, want)
    if byte == 0x04:  # index 2
        assert list(out.errors) == [37] and out.errors[37].reason == "invalid_avro"
    elif not null_item:  # index -1: fastavro takes branches[-1] (a Python index), the string that is there
        assert not out.errors and out.records[37]["item_id"] == "x1"


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "A", "fields": [{"name": "xs", "type": {"type": "array", "items": ["null", "long"]}}]},
    {"type": "record", "name": "M", "fields": [{"name": "m", "type": {"type": "map", "values": ["string", "null"]}}]},
])
def test_a_nullable_union_inside_an_array_or_map_is_decoded_one_by_one(schema: dict[str, Any]) -> None:
    body = AvroCodec(schema).encode({"xs": [1, None, 3]} if schema["name"] == "A" else {"m": {"a": None, "b": "x"}})
    bulk = BulkDecoder(schema)
    assert bulk.decode([body] * 3) is None
    nullable = pa.array([[1, None]], pa.list_(pa.int64())) if schema["name"] == "A" else \
        pa.array([[("a", None)]], pa.map_(pa.string(), pa.string()))
    column = pa.StructArray.from_arrays([nullable], names=[schema["fields"][0]["name"]])
    assert list(encoded_sizes(schema, column)) == [len(AvroCodec(schema).encode(column.to_pylist(maps_as_pydicts="lossy")[0]))]
    with pytest.raises(BulkUnsupported):
        encoded_sizes(schema, column, start=np.zeros(1, dtype=np.int64), checks=[])


@pytest.mark.parametrize("index", [3, 5, 63, -1, -3])
def test_an_out_of_range_enum_index_is_refused(index: int) -> None:
    body = MIXED_CODEC.encode(_SAMPLE["mixed"])
    assert body[0] == 2 << 1  # the enum index comes first
    bad = _zigzag(index) + body[1:]
    # -1: fastavro reads symbols[-1] ("blue"), a Python negative index; arrow-avro must not say otherwise
    assert MIXED_BULK.decode([body, bad]) is None
    assert MIXED_BULK.decode([bad]) is None


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**32 + 5, 2**40])
def test_an_int_beyond_32_bits_is_refused(value: int) -> None:
    body = MIXED_CODEC.encode(_SAMPLE["mixed"])
    bad = body[:1] + _zigzag(value) + body[2:]
    assert MIXED_CODEC.decode(bad)["i"] == value  # fastavro reads it as a long
    assert MIXED_BULK.decode([bad]) is None


@given(st.lists(longs, min_size=1, max_size=50))
@settings(max_examples=100, deadline=None)
def test_encoded_sizes_of_longs_and_strings(values: list[int]) -> None:
    codec = AvroCodec({"type": "long"})
    assert list(encoded_sizes("long", pa.array(values, pa.int64()))) == [len(codec.encode(v)) for v in values]
    strings = [str(v) * (abs(v) % 50) for v in values]
    assert list(encoded_sizes("string", pa.array(strings))) == [len(AvroCodec({"type": "string"}).encode(s)) for s in strings]


# ---------------------------------------------------------------------------------------------- deserialize_many

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
            out.append(frame(CONTRACT_ID, draw(corrupted([body], [CLICK_CODEC.encode(_SAMPLE["clickstream"])]))[0]))
    return out


@FUZZ
@given(values=values_strategy(), bulk_min=st.integers(1, 8))
def test_deserialize_many_gives_for_each_value_what_deserialize_gives(values: list[bytes | None], bulk_min: int) -> None:
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    assert_as_deserialize(values, serde.deserialize_many(values, bulk_min=bulk_min))
    assert_as_deserialize(values, serde.deserialize_many(values, bulk_min=bulk_min))  # with warm caches


def _goods(n: int, schema_id: int = CONTRACT_ID) -> list[bytes | None]:
    return [frame(schema_id, PRED_CODEC.encode({**_SAMPLE["predictions"], "prediction_id": f"p{i}", "ts": i,
                                                "features": {"user.views_1h": float(i), "x": None, "s": str(i)}}))
            for i in range(n)]


def test_deserialize_many_decodes_a_large_group_of_the_contract_schema_in_bulk() -> None:
    body = PRED_CODEC.encode(_SAMPLE["predictions"])
    values = _goods(70) + [None, b"\x00\x00", b"\x07" + body, frame(UNKNOWN_ID, body), frame(BROKEN_ID, body),
                           frame(OLDER_ID, OLDER_CODEC.encode({**_SAMPLE["predictions"], "extra": "x"}))]
    values += _goods(5, ALIAS_ID)
    registry = MemoryRegistry()
    serde = TopicSerde(PREDICTIONS, registry)
    out = serde.deserialize_many(values)
    assert [indices for indices, _ in out.columns] == [list(range(70))]
    assert sorted(out.records) == [75, *range(76, 81)]
    assert {i: e.reason for i, e in out.errors.items()} == {70: "empty", 71: "truncated", 72: "bad_magic",
                                                            73: "unknown_schema", 74: "bad_writer_schema"}
    assert_as_deserialize(values, out)
    lookups = registry.lookups
    serde.deserialize_many(values)
    assert registry.lookups == lookups + 1  # only the broken id is looked up again (unknown ids are cached)


def test_deserialize_many_takes_the_bulk_path_from_bulk_min_on() -> None:
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    assert serde.deserialize_many(_goods(63)).columns == []
    assert len(serde.deserialize_many(_goods(63)).records) == 63
    out = serde.deserialize_many(_goods(64))
    assert [indices for indices, _ in out.columns] == [list(range(64))] and not out.records
    assert_as_deserialize(_goods(64), out)
    aliased = serde.deserialize_many(_goods(64, ALIAS_ID))  # the same schema under another id: bulk too
    assert [indices for indices, _ in aliased.columns] == [list(range(64))]


@pytest.mark.parametrize("damage", [lambda v: v + b"\x00", lambda v: v[:-1], lambda v: v[:-9],
                                    lambda v: v[:HEADER_SIZE] + CLICK_CODEC.encode(_SAMPLE["clickstream"])])
def test_one_corrupt_value_among_a_hundred_sends_the_group_one_by_one(damage: Any) -> None:
    values = _goods(101)
    values[50] = damage(values[50])
    serde = TopicSerde(PREDICTIONS, MemoryRegistry())
    out = serde.deserialize_many(values)
    assert out.columns == []
    assert sorted(out.records) == [i for i in range(101) if i != 50]
    assert list(out.errors) == [50] and out.errors[50].reason == "invalid_avro"
    assert_as_deserialize(values, out)


def test_two_values_whose_boundary_moved_are_decoded_one_by_one() -> None:
    values = _goods(100)
    both = values[40][HEADER_SIZE:] + values[41][HEADER_SIZE:]  # type: ignore[index]
    values[40], values[41] = frame(CONTRACT_ID, both[:-3]), frame(CONTRACT_ID, both[-3:])
    out = TopicSerde(PREDICTIONS, MemoryRegistry()).deserialize_many(values)
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
    good = [frame(CLICK_ID, CLICK_CODEC.encode(_click(i))) for i in range(70)]
    body = CLICK_CODEC.encode(_click(0))
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
    out = TopicSerde(CLICKSTREAM, registry).deserialize_many(values, report_outage=True)
    assert min(out.unavailable) == raised_at == 32
    assert sorted(out.unavailable) == [32, 63, 64]  # the down id's values and those of the id first met after it
    assert registry.lookups == [CLICK_ID, unknown, down]  # not asked again after it failed
    assert [i for indices, _ in out.columns for i in indices] == [i for i in range(len(values))
                                                                  if i not in (30, 31, 32, 63, 64, 65)]
    assert {i: e.reason for i, e in out.errors.items()} == {30: "empty", 31: "unknown_schema", 65: "unknown_schema"}
    outcomes = out.outcomes(len(values))
    assert all(isinstance(outcomes[i], RegistryError) for i in (32, 63, 64))
    assert outcomes[:30] == [CLICK_CODEC.decode(v[HEADER_SIZE:]) for v in good[:30]]  # type: ignore[index]
