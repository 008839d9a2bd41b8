"""PostgreSQL columns -> Avro: the schema of a table's change envelope and the values of its rows.

Pure: takes column descriptions (from the catalog or a pgoutput Relation), returns Avro JSON and
converters from PostgreSQL's text output (the form pgoutput sends and a `::text` snapshot reads).
The canonical shop tables derive exactly the contract schemas in `schemas/avro/cdc_shop_*.avsc`.

Type mapping (documented in README): bool -> boolean; int2/int4 -> int; int8/oid -> long; float4 ->
float; float8 and numeric -> double (as Debezium's decimal.handling.mode=double); timestamp and
timestamptz -> long timestamp-millis (UTC); date -> int date; bytea -> bytes; an enum type -> an Avro
enum named after it (default: its first label); everything else (text, varchar, uuid, json, arrays…)
-> its text form. Primary-key columns are required, every other column is optional (null default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from schemas.errors import SchemaError
from schemas.topics import CDC_USERS

DAY_MS = 86_400_000
_EPOCH_DATE = date(1970, 1, 1)

_INT = {21, 23}  # int2, int4
_LONG = {20, 26}  # int8, oid
_TIMESTAMPS = {1114, 1184}  # timestamp, timestamptz
_SIMPLE: dict[int, str] = {16: "boolean", 700: "float", 701: "double", 1700: "double", 17: "bytes"}
_DATE = 1082
_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CdcSchemaError(SchemaError):
    """A table cannot be mapped to an Avro schema as it is."""


@dataclass(frozen=True)
class ColumnSpec:
    """One column as the reader sees it: name, type OID, and for enum types their name and labels."""

    name: str
    type_oid: int
    key: bool = False
    enum_name: str | None = None
    enum_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    """A captured table: where it lives, which topic its changes go to, and its columns."""

    schema: str
    table: str
    db: str  # logical database name, used in topic names and `source.db`
    columns: tuple[ColumnSpec, ...] = field(default=())

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def topic(self) -> str:
        """`cdc.<db>.<table>`, the contract's naming (DESIGN.md, "Topics and contracts")."""
        return cdc_topic(self.db, self.table)

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.key)

    def with_columns(self, columns: Sequence[ColumnSpec]) -> TableSpec:
        return TableSpec(self.schema, self.table, self.db, tuple(columns))


def cdc_topic(db: str, table: str) -> str:
    return f"cdc.{db}.{table}"


def source_schema() -> dict[str, Any]:
    """The Debezium-style `source` block, shared by every CDC topic (taken from the contract, not restated)."""
    return next(f["type"] for f in CDC_USERS.schema["fields"] if f["name"] == "source")


def avro_type(column: ColumnSpec, defined: set[str]) -> Any:
    """The Avro type of one column's values (without the optional-null union)."""
    oid = column.type_oid
    if column.enum_name is not None:
        name = enum_avro_name(column.enum_name)
        if name in defined:
            return name
        defined.add(name)
        return {"type": "enum", "name": name, "symbols": list(column.enum_labels),
                "default": column.enum_labels[0]} if column.enum_labels else "string"
    if oid in _INT:
        return "int"
    if oid in _LONG:
        return "long"
    if oid in _TIMESTAMPS:
        return {"type": "long", "logicalType": "timestamp-millis"}
    if oid == _DATE:
        return {"type": "int", "logicalType": "date"}
    return _SIMPLE.get(oid, "string")


def enum_avro_name(pg_type: str) -> str:
    """`tier` -> `Tier`, `order_state` -> `OrderState` (Avro names are identifiers)."""
    parts = [p for p in "".join(ch if ch.isalnum() else "_" for ch in pg_type).split("_") if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Enum"
    return name if not name[0].isdigit() else f"E{name}"


def envelope_schema(table: TableSpec) -> dict[str, Any]:
    """The Avro schema of `table`'s change events: Debezium's Envelope{before, after, source, op, ts_ms}.

    `CdcSchemaError` when a column name is not an Avro field name (rename the column or leave the table out).
    """
    namespace = ".".join(_ident(part) for part in ("cdc", table.db, table.table))
    defined: set[str] = set()
    fields = []
    for column in table.columns:
        if not _AVRO_NAME.fullmatch(column.name):
            raise CdcSchemaError(f"column {column.name!r} of {table.qualified} is not a valid Avro field name "
                                 "(letters, digits and _ only, not starting with a digit); rename it or "
                                 "leave the table out of --tables")
        kind = avro_type(column, defined)
        if column.key:
            fields.append({"name": column.name, "type": kind})
        else:
            fields.append({"name": column.name, "type": ["null", kind], "default": None})
    value = {"type": "record", "name": "Value", "namespace": namespace, "fields": fields,
             "doc": "A row of the table; columns other than the primary key are optional (null when unknown, "
                    "e.g. in the key-only before image of a delete)."}
    return {
        "type": "record", "name": "Envelope", "namespace": namespace,
        "doc": f"Debezium-style change event for {table.db}.{table.table}, keyed by its primary key.",
        "fields": [
            {"name": "before", "type": ["null", value], "default": None},
            {"name": "after", "type": ["null", f"{namespace}.Value"], "default": None},
            {"name": "source", "type": source_schema()},
            {"name": "op", "type": "string", "doc": "c=create, u=update, d=delete, r=snapshot read"},
            {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"},
             "doc": "Event time: when the change was captured."},
        ],
    }


Converter = Callable[[str], Any]


def _ident(text: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)
    return out if out and not out[0].isdigit() else f"_{out}"


def _timestamp_ms(text: str) -> int | None:
    if text in ("infinity", "-infinity") or text.endswith(" BC"):
        return None  # not representable as epoch milliseconds
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # `timestamp` columns are read as UTC (the session's TimeZone)
    return int(value.timestamp() * 1000)


def _date_days(text: str) -> int | None:
    if text in ("infinity", "-infinity") or text.endswith(" BC"):
        return None
    return (date.fromisoformat(text) - _EPOCH_DATE).days


def _bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()


def _bool(text: str) -> bool:
    return text in ("t", "true")  # pgoutput prints `t`; the snapshot's `::text` cast prints `true`


def converter(column: ColumnSpec) -> Converter:
    """Text output of PostgreSQL (DateStyle ISO, TimeZone UTC, bytea_output hex) -> the Avro value."""
    oid = column.type_oid
    if column.enum_name is not None:
        return str
    if oid in _INT or oid in _LONG:
        return int
    if oid in (700, 701, 1700):
        return float  # accepts NaN and Infinity as PostgreSQL prints them
    if oid == 16:
        return _bool
    if oid in _TIMESTAMPS:
        return _timestamp_ms
    if oid == _DATE:
        return _date_days
    if oid == 17:
        return _bytea
    return str


def row_of(columns: Sequence[ColumnSpec], converters: Sequence[Converter], values: Sequence[Any],
           problems: list[str] | None = None) -> dict[str, Any]:
    """A row dict from text values; None stays None (SQL NULL or a value the reader could not see).

    A value with no Avro form (year 10000, `infinity`) becomes None and its column is added to `problems`.
    """
    row: dict[str, Any] = {}
    for column, conv, value in zip(columns, converters, values, strict=True):
        if value is None:
            row[column.name] = None
            continue
        try:
            row[column.name] = out = conv(value)
        except (ValueError, OverflowError):
            row[column.name] = out = None
        if out is None and problems is not None:
            problems.append(column.name)
    return row


def message_key(table: TableSpec, row: dict[str, Any]) -> str:
    """The record key: the primary key's value as a string, or a JSON object for a composite key."""
    keys = table.key_columns
    if len(keys) == 1:
        value = row.get(keys[0])
        return "" if value is None else str(value)
    return json.dumps({k: row.get(k) for k in keys}, sort_keys=True, separators=(",", ":"), default=str)
