"""Arrow schemas derived from the Avro contracts, so the Parquet logs are typed like the topics.

Pure: Avro JSON in, `pyarrow.Schema` out. Timestamps become `timestamp[ms, UTC]`, enums strings,
records structs, maps maps, `["null", T]` unions nullable T.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from schemas.errors import SchemaError

_PRIMITIVES = {
    "string": pa.string(), "bytes": pa.binary(), "int": pa.int32(), "long": pa.int64(),
    "float": pa.float32(), "double": pa.float64(), "boolean": pa.bool_(),
}


def arrow_schema(avro: dict[str, Any], extra: list[pa.Field] | None = None) -> pa.Schema:
    """The Arrow schema of an Avro record schema, plus `extra` metadata columns."""
    named: dict[str, pa.DataType] = {}
    struct = _type(avro, named, avro.get("namespace", ""))
    return pa.schema(list(struct) + list(extra or []))


def _type(node: Any, named: dict[str, pa.DataType], namespace: str) -> pa.DataType:
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return _PRIMITIVES[node]
        full = node if "." in node else f"{namespace}.{node}"
        if full in named:
            return named[full]
        if node in named:
            return named[node]
        raise SchemaError(f"unknown Avro type {node!r}")
    if isinstance(node, list):
        branches = [b for b in node if b != "null"]
        if len(branches) != 1:
            return pa.string()  # general unions are logged as their string form
        return _type(branches[0], named, namespace)
    kind = node["type"]
    logical = node.get("logicalType")
    if logical in ("timestamp-millis", "local-timestamp-millis"):
        return pa.timestamp("ms", tz="UTC")
    if kind == "record":
        ns = node.get("namespace", namespace)
        full = f"{ns}.{node['name']}" if ns else node["name"]
        fields = [pa.field(f["name"], _type(f["type"], named, ns), nullable=True) for f in node["fields"]]
        named[full] = named[node["name"]] = pa.struct(fields)
        return named[full]
    if kind == "enum":
        ns = node.get("namespace", namespace)
        named[f"{ns}.{node['name']}"] = named[node["name"]] = pa.string()
        return pa.string()
    if kind == "array":
        return pa.list_(_type(node["items"], named, namespace))
    if kind == "map":
        return pa.map_(pa.string(), _type(node["values"], named, namespace))
    if kind == "fixed":
        return pa.binary(node["size"])
    return _type(kind, named, namespace)
