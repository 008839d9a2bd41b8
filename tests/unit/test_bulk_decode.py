"""Bulk Avro decoding (arrow-avro) against fastavro one by one: same rows, or a refusal, never another answer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.bulk import BulkDecoder, BulkUnsupported, encoded_sizes, records_of
from schemas.codec import AvroCodec, frame
from schemas.encoder import zigzag_varint
from schemas.errors import DecodeError
from schemas.serde import TopicSerde
from schemas.topics import CLICKSTREAM
from tests.avro_cases import (
    CLICK_BULK,
    CLICK_CODEC,
    CLICK_ID,
    FUZZ,
    KINDS,
    MIXED_BULK,
    MIXED_CODEC,
    SAMPLE,
    SETTINGS,
    ClickRegistry,
    click_record,
    corrupted,
    longs,
    one_by_one,
    rows_of,
)
from tests.oracle import same


def drawn_bodies(kind: str, data: st.DataObject, max_size: int) -> tuple[AvroCodec, BulkDecoder, list[bytes]]:
    """One to `max_size` records of `kind` drawn and encoded by fastavro: (codec, bulk decoder, bodies)."""
    codec, bulk, records, _, _ = KINDS[kind]
    return codec, bulk, [codec.encode(r) for r in data.draw(st.lists(records, min_size=1, max_size=max_size))]


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
    codec, bulk, bodies = drawn_bodies(kind, data, 12)
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
    codec, bulk, good = drawn_bodies(kind, data, 8)
    _, _, _, other_codec, other_records = KINDS[kind]
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
    body = codec.encode(SAMPLE[kind])
    other = other_codec.encode(SAMPLE["clickstream" if kind == "predictions" else "predictions"])
    for bad in (body + b"\x00", body[:-1], b"", other, body + body):
        assert isinstance(one_by_one(codec, bad), DecodeError)
        assert bulk.decode([body, bad, body]) is None
        assert bulk.decode([bad]) is None
    assert bulk.decode([]) is None
    for cut in (1, len(body) - 1, len(body) + 1):  # the bytes of two good bodies, split at the wrong place
        pair = [(body + body)[:cut], (body + body)[cut:]]
        assert all(isinstance(one_by_one(codec, b), DecodeError) for b in pair)
        assert bulk.decode([body, *pair]) is None


def test_clickstream_records_decode_in_bulk_as_fastavro_decodes_them() -> None:
    records = [click_record(i) for i in range(40)]
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



@pytest.mark.parametrize("null_item", [False, True])
@pytest.mark.parametrize("byte", [0x04, 0x01])
def test_a_corrupt_branch_index_sends_the_batch_one_by_one(byte: int, null_item: bool) -> None:
    bodies = [CLICK_CODEC.encode(click_record(i, item_id=None if null_item else "x1")) for i in range(100)]
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
    body = MIXED_CODEC.encode(SAMPLE["mixed"])
    assert body[0] == 2 << 1  # the enum index comes first
    bad = zigzag_varint(index) + body[1:]
    # -1: fastavro reads symbols[-1] ("blue"), a Python negative index; arrow-avro must not say otherwise
    assert MIXED_BULK.decode([body, bad]) is None
    assert MIXED_BULK.decode([bad]) is None


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**32 + 5, 2**40])
def test_an_int_beyond_32_bits_is_refused(value: int) -> None:
    body = MIXED_CODEC.encode(SAMPLE["mixed"])
    bad = body[:1] + zigzag_varint(value) + body[2:]
    assert MIXED_CODEC.decode(bad)["i"] == value  # fastavro reads it as a long
    assert MIXED_BULK.decode([bad]) is None


@given(st.lists(longs, min_size=1, max_size=50))
@settings(max_examples=100, deadline=None)
def test_encoded_sizes_of_longs_and_strings(values: list[int]) -> None:
    codec = AvroCodec({"type": "long"})
    assert list(encoded_sizes("long", pa.array(values, pa.int64()))) == [len(codec.encode(v)) for v in values]
    strings = [str(v) * (abs(v) % 50) for v in values]
    assert list(encoded_sizes("string", pa.array(strings))) == [len(AvroCodec({"type": "string"}).encode(s)) for s in strings]

