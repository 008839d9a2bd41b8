"""The compiled Avro encoder writes exactly fastavro's bytes, and leaves to fastavro what it cannot write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import AvroCodec, strip_logical_types
from schemas.encoder import compile_schema
from schemas.errors import SchemaError

SCHEMAS = {p.stem: json.loads(p.read_text()) for p in sorted(Path("schemas/avro").glob("*.avsc"))}
# the contract schemas the encoder compiles (the CDC envelopes' ["null", record] unions stay with fastavro,
# so comparing them with fastavro would compare fastavro with itself)
COMPILED = sorted(name for name, schema in SCHEMAS.items() if AvroCodec(schema)._fast is not None)
ODD = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values of `schema`, with the edges: int bounds, NaN and inf, unicode, ints for doubles."""
    if isinstance(schema, list):
        return st.one_of(*[values(branch, named) for branch in schema])
    if isinstance(schema, str):
        short = schema.rsplit(".", 1)[-1]  # a namespaced reference to a type defined above
        if short in named:
            return values(named[short], named)
        return {
            "null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1), "float": st.floats(width=32) | st.integers(-1000, 1000),
            "double": st.floats() | st.integers(-(2**60), 2**60), "string": st.text(max_size=300),
            "bytes": st.binary(max_size=300),
        }[schema]
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return st.fixed_dictionaries({f["name"]: values(f["type"], named) for f in schema["fields"]})
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "map":
        return st.dictionaries(st.text(max_size=20), values(schema["values"], named), max_size=300)
    if kind == "array":
        return st.lists(values(schema["items"], named), max_size=5)
    return values(kind, named)


def fastavro_only(schema: dict[str, Any]) -> AvroCodec:
    codec = AvroCodec(schema)
    codec._fast = None
    return codec


def same(a: bytes | Exception, b: bytes | Exception) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b)
    return a == b


def outcome(codec: AvroCodec, record: Any) -> bytes | Exception:
    try:
        return codec.encode(record)
    except SchemaError as exc:
        return exc


@pytest.mark.parametrize("name", COMPILED)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_compiled_encoding_equals_fastavro_for_valid_records(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    record = data.draw(values(strip_logical_types(schema), {}))
    fast = compile_schema(strip_logical_types(schema))
    parts: list[bytes] = []
    fast(parts, record)  # a valid record is written by the compiled encoder, not handed on
    assert b"".join(parts) == fastavro_only(schema).encode(record)


@pytest.mark.parametrize("name", COMPILED)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_wrong_value_anywhere_gives_what_fastavro_gives(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    record = data.draw(values(strip_logical_types(schema), {}))
    field = data.draw(st.sampled_from([f["name"] for f in schema["fields"]]))
    if data.draw(st.booleans()):
        record[field] = data.draw(ODD)
    else:
        del record[field]
    assert same(outcome(AvroCodec(schema), record), outcome(fastavro_only(schema), record))


def test_the_hot_contract_schemas_compile() -> None:
    for name in ("prediction_log", "clickstream", "label", "drift_metric"):
        assert name in COMPILED, name


def test_a_union_with_a_complex_branch_is_left_to_fastavro() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "u", "type": ["null", {"type": "map", "values": "long"}]}]}
    codec = AvroCodec(schema)
    assert codec._fast is None
    assert codec.decode(codec.encode({"u": {"a": 1}})) == {"u": {"a": 1}}


def test_ints_take_the_first_union_branch_that_holds_them_as_fastavro_does() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["null", "int", "double"]}]}
    for value in (5, 2**31, -(2**31) - 1, 1.5, None):
        assert AvroCodec(schema).encode({"u": value}) == fastavro_only(schema).encode({"u": value})
