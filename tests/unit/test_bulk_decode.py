"""Bulk Avro decoding (arrow-avro) against fastavro one by one: same rows, or a refusal, never another answer."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.bulk import BulkDecoder, encoded_sizes
from schemas.codec import HEADER_SIZE, AvroCodec, frame
from schemas.errors import DecodeError
from schemas.serde import Decoded, TopicSerde
from schemas.topics import CLICKSTREAM, PREDICTIONS
from tests.oracle import same

PRED_CODEC = AvroCodec(PREDICTIONS.schema)
CLICK_CODEC = AvroCodec(CLICKSTREAM.schema)
PRED_BULK = BulkDecoder(PREDICTIONS.schema)
CLICK_BULK = BulkDecoder(CLICKSTREAM.schema)

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
    "mixed": (MIXED_CODEC, MIXED_BULK, mixed, PRED_CODEC, predictions),
}
# Schemas whose valid bodies must decode in bulk. Clickstream has ["null", T] unions, which arrow-avro
# decodes as a nullable T without checking the branch index: schemas.bulk refuses them (one by one).
BULK_DECODED = {"predictions", "mixed"}

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
    if kind not in BULK_DECODED:
        assert batch is None
        return
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
}


def _zigzag(n: int) -> bytes:
    n, out = (n << 1) ^ (n >> 63), bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


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
    for i, (got, value) in enumerate(zip(actual_of(out, len(values)), values, strict=True)):
        want = expected_of(value)
        assert same(got, want), (i, value if value is None else value.hex(), got, want)


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
