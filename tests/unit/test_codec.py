"""Confluent framing and Avro encode/decode, without services."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import HEADER_SIZE, AvroCodec, frame, split_frame, strip_logical_types
from schemas.errors import DecodeError, SchemaError
from schemas.serde import TopicSerde
from schemas.topics import CLICKSTREAM, TOPICS

EVENT = {
    "event_id": "e1", "user_id": "u1", "session_id": "s1", "event_type": "purchase", "item_id": "i9",
    "price": 19.99, "ts": 1_700_000_000_123, "page": "/item/i9", "referrer": None, "device": "mobile",
    "country": "DE", "props": {"ab": "b"},
}


class MemoryRegistry:
    """Just enough of a registry for serde unit tests: ids by schema text."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}

    def register(self, subject, schema):
        import json

        text = schema if isinstance(schema, str) else json.dumps(schema)
        for sid, known in self.schemas.items():
            if known == text:
                return sid
        sid = len(self.schemas) + 1
        self.schemas[sid] = text
        return sid

    def schema_by_id(self, schema_id):
        return self.schemas.get(schema_id)


def test_frame_is_magic_byte_then_big_endian_id():
    data = frame(258, b"body")
    assert data[:5] == b"\x00\x00\x00\x01\x02"
    assert split_frame(data) == (258, memoryview(b"body"))


@given(st.integers(0, 2**32 - 1), st.binary(min_size=1))
def test_frame_round_trips_any_id_and_body(schema_id, body):
    sid, rest = split_frame(frame(schema_id, body))
    assert sid == schema_id and bytes(rest) == body


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(None, "empty"), (b"", "truncated"), (b"\x00\x00\x00", "truncated"), (b"\x01\x00\x00\x00\x01x", "bad_magic")],
)
def test_bad_frames_raise_typed_errors(payload, reason):
    with pytest.raises(DecodeError) as err:
        split_frame(payload)
    assert err.value.reason == reason


def test_timestamps_stay_epoch_millis_in_process():
    codec = AvroCodec(CLICKSTREAM.schema)
    decoded = codec.decode(codec.encode(EVENT))
    assert decoded == EVENT and isinstance(decoded["ts"], int)


def test_strip_logical_types_leaves_the_original_untouched():
    stripped = strip_logical_types(CLICKSTREAM.schema)
    assert "timestamp-millis" in CLICKSTREAM.schema_str
    assert "logicalType" not in str(stripped)


def test_encoding_a_bad_record_names_the_field():
    with pytest.raises(SchemaError, match="ts"):
        AvroCodec(CLICKSTREAM.schema).encode({**EVENT, "ts": "yesterday"})


def test_truncated_body_is_a_decode_error_with_position():
    serde = TopicSerde(CLICKSTREAM, MemoryRegistry())
    data = serde.serialize(EVENT)
    with pytest.raises(DecodeError) as err:
        serde.deserialize(data[:-8], partition=3, offset=42)
    assert (err.value.topic, err.value.partition, err.value.offset) == (CLICKSTREAM.name, 3, 42)
    assert err.value.reason == "invalid_avro"
    assert "clickstream.events[3]@42" in str(err.value)


def test_unknown_schema_id_is_a_decode_error():
    serde = TopicSerde(CLICKSTREAM, MemoryRegistry())
    with pytest.raises(DecodeError) as err:
        serde.deserialize(frame(999, b"\x02x"))
    assert err.value.reason == "unknown_schema"


def test_trailing_bytes_after_the_record_are_invalid_avro():
    serde = TopicSerde(CLICKSTREAM, MemoryRegistry())
    data = serde.serialize(EVENT)
    assert serde.deserialize(data) == EVENT
    with pytest.raises(DecodeError, match="1 bytes left after the record") as err:
        serde.deserialize(data + b"\x00")
    assert err.value.reason == "invalid_avro"


def test_unknown_schema_ids_are_looked_up_once_per_ttl_and_remembered_in_bounded_memory():
    from schemas.serde import _UNKNOWN_IDS_MAX

    class CountingRegistry(MemoryRegistry):
        lookups = 0

        def schema_by_id(self, schema_id):
            self.lookups += 1
            return super().schema_by_id(schema_id)

    registry = CountingRegistry()
    serde = TopicSerde(CLICKSTREAM, registry)
    for _ in range(3):
        with pytest.raises(DecodeError):
            serde.deserialize(frame(999, b"\x02x"))
    assert registry.lookups == 1  # remembered as unknown for a while: no lookup per record
    for schema_id in range(10_000, 10_000 + _UNKNOWN_IDS_MAX + 500):  # e.g. random bytes where the id goes
        with pytest.raises(DecodeError):
            serde.deserialize(frame(schema_id, b"\x02x"))
    assert len(serde._unknown) <= _UNKNOWN_IDS_MAX


def test_records_written_with_an_older_schema_resolve_to_the_contract():
    registry = MemoryRegistry()
    old = {k: v for k, v in CLICKSTREAM.schema.items()}
    old["fields"] = [f for f in CLICKSTREAM.schema["fields"] if f["name"] not in ("referrer", "props")]
    old_id = registry.register("clickstream.events-value", old)
    body = AvroCodec(old).encode({k: v for k, v in EVENT.items() if k not in ("referrer", "props")})
    decoded = TopicSerde(CLICKSTREAM, registry).deserialize(frame(old_id, body))
    assert decoded["referrer"] is None and decoded["props"] == {}
    assert decoded["price"] == EVENT["price"]


@pytest.mark.parametrize("spec", TOPICS, ids=lambda s: s.name)
def test_every_contract_schema_parses_and_has_event_time(spec):
    AvroCodec(spec.schema)
    field = next(f for f in spec.schema["fields"] if f["name"] == spec.time_field)
    assert field["type"]["logicalType"] == "timestamp-millis"


def test_header_is_magic_byte_plus_four_byte_id():
    assert HEADER_SIZE == struct.calcsize(">bI") == 5
