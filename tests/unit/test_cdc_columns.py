"""PostgreSQL columns -> Avro: the canonical shop tables derive exactly the contract schemas; text values convert."""

from __future__ import annotations

import math

import pytest

from schemas.codec import AvroCodec, fingerprint
from schemas.compatibility import check
from schemas.topics import CDC_ITEMS, CDC_USERS
from streams.cdc.columns import (
    CdcSchemaError,
    ColumnSpec,
    TableSpec,
    converter,
    enum_avro_name,
    envelope_schema,
    message_key,
    row_of,
)

TEXT, BOOL, INT4, INT8, FLOAT8, NUMERIC, TIMESTAMPTZ, TIMESTAMP, DATE, BYTEA, UUID = (
    25, 16, 23, 20, 701, 1700, 1184, 1114, 1082, 17, 2950)

USERS = TableSpec("public", "users", "shop", (
    ColumnSpec("user_id", TEXT, key=True),
    ColumnSpec("tier", 16384, enum_name="tier", enum_labels=("free", "plus", "premium")),
    ColumnSpec("country", TEXT),
    ColumnSpec("signup_ts", TIMESTAMPTZ),
    ColumnSpec("marketing_opt_in", BOOL),
))
ITEMS = TableSpec("public", "items", "shop", (
    ColumnSpec("item_id", TEXT, key=True), ColumnSpec("category", TEXT), ColumnSpec("price", FLOAT8),
    ColumnSpec("brand", TEXT)))


@pytest.mark.parametrize(("table", "spec"), [(USERS, CDC_USERS), (ITEMS, CDC_ITEMS)])
def test_canonical_tables_derive_the_contract_schema(table: TableSpec, spec) -> None:
    derived = envelope_schema(table)
    assert table.topic == spec.name
    assert fingerprint(derived) == fingerprint(spec.schema)  # Parsing Canonical Form: same names, types, order
    assert check(derived, [spec.schema], "FULL") == []


def test_added_nullable_column_is_a_backward_compatible_evolution() -> None:
    evolved = USERS.with_columns([*USERS.columns, ColumnSpec("loyalty_points", INT4)])
    assert check(envelope_schema(evolved), [envelope_schema(USERS)], "BACKWARD") == []
    changed = USERS.with_columns([*USERS.columns[:2], ColumnSpec("country", INT8), *USERS.columns[3:]])
    assert check(envelope_schema(changed), [envelope_schema(USERS)], "BACKWARD") != []


def test_records_written_with_the_derived_schema_decode_with_the_contract() -> None:
    evolved = USERS.with_columns([*USERS.columns, ColumnSpec("loyalty_points", INT4)])
    writer, reader = AvroCodec(envelope_schema(evolved)), AvroCodec(CDC_USERS.schema)
    source = {"version": "t", "connector": "postgresql", "name": "shop", "ts_ms": 1, "snapshot": "false",
              "db": "shop", "schema": "public", "table": "users", "txId": 7, "lsn": 99, "pos": None}
    key_only = {"user_id": "u1", "tier": None, "country": None, "signup_ts": None, "marketing_opt_in": None,
                "loyalty_points": None}
    record = {"before": key_only, "after": None, "source": source, "op": "d", "ts_ms": 2}
    decoded = reader.decode(writer.encode(record), writer)
    assert decoded["before"] == {k: v for k, v in key_only.items() if k != "loyalty_points"}


def test_enum_names_and_shared_enum_types() -> None:
    assert enum_avro_name("tier") == "Tier"
    assert enum_avro_name("order_state") == "OrderState"
    assert enum_avro_name("2x") == "E2x"
    table = TableSpec("public", "t", "db", (
        ColumnSpec("id", INT8, key=True), ColumnSpec("a", 1, enum_name="mood", enum_labels=("sad", "ok")),
        ColumnSpec("b", 1, enum_name="mood", enum_labels=("sad", "ok"))))
    AvroCodec(envelope_schema(table))  # the second use refers to the named type instead of redefining it


def test_bad_column_names_are_refused_with_the_way_out() -> None:
    table = TableSpec("public", "t", "db", (ColumnSpec("id", INT8, key=True), ColumnSpec("first name", TEXT)))
    with pytest.raises(CdcSchemaError, match="rename it or leave the table out"):
        envelope_schema(table)


def test_text_values_convert_to_avro_values() -> None:
    columns = (ColumnSpec("b", BOOL), ColumnSpec("i", INT4), ColumnSpec("l", INT8), ColumnSpec("f", FLOAT8),
               ColumnSpec("n", NUMERIC), ColumnSpec("tz", TIMESTAMPTZ), ColumnSpec("ts", TIMESTAMP),
               ColumnSpec("d", DATE), ColumnSpec("by", BYTEA), ColumnSpec("u", UUID), ColumnSpec("t", TEXT))
    texts = ("t", "-5", "9007199254740993", "Infinity", "12.50", "2026-11-23 16:23:23.123456+00",
             "1999-01-08 04:05:06.5", "1970-01-02", "\\x00ff", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "x")
    row = row_of(columns, [converter(c) for c in columns], texts)
    assert row["b"] is True and converter(ColumnSpec("b", BOOL))("true") is True and row["i"] == -5 and row["l"] == 9007199254740993
    assert math.isinf(row["f"]) and row["n"] == 12.5
    assert row["tz"] == 1_795_451_003_123
    assert row["ts"] == 915_768_306_500
    assert row["d"] == 1 and row["by"] == b"\x00\xff" and row["u"].startswith("a0ee") and row["t"] == "x"


def test_unrepresentable_values_become_null_and_are_reported() -> None:
    columns = (ColumnSpec("ts", TIMESTAMPTZ), ColumnSpec("d", DATE), ColumnSpec("big", TIMESTAMPTZ),
               ColumnSpec("ok", TEXT))
    problems: list[str] = []
    row = row_of(columns, [converter(c) for c in columns], ("infinity", "0044-03-15 BC", "10000-01-01 00:00:00+00",
                                                             None), problems)
    assert row == {"ts": None, "d": None, "big": None, "ok": None}
    assert problems == ["ts", "d", "big"]  # SQL NULL is not a problem


def test_message_keys() -> None:
    assert message_key(USERS, {"user_id": "u7"}) == "u7"
    composite = TableSpec("public", "t", "db", (ColumnSpec("a", INT4, key=True), ColumnSpec("b", TEXT, key=True)))
    assert message_key(composite, {"a": 1, "b": "x"}) == '{"a":1,"b":"x"}'


def test_envelopes_encode_with_the_named_row_type_even_when_names_need_sanitising() -> None:
    from schemas.codec import split_frame
    from streams.cdc.reader import TableStream

    stream = TableStream(TableSpec("public", "order-lines", "my-shop", ITEMS.columns), schema_id=7)
    row = {"item_id": "i1", "category": "x", "price": 1.0, "brand": "b"}
    source = {"version": "t", "connector": "postgresql", "name": "my-shop", "ts_ms": 1, "snapshot": "false",
              "db": "my-shop", "schema": "public", "table": "order-lines", "txId": 1, "lsn": 2, "pos": None}
    data = stream.encode({"before": None, "after": (stream.value_type, row), "source": source, "op": "c", "ts_ms": 3})
    schema_id, body = split_frame(data)
    assert schema_id == 7 and stream.codec.decode(body)["after"] == row
    assert stream.topic == "cdc.my-shop.order-lines"
