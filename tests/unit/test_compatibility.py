"""Avro schema-resolution rules of `schemas.compatibility`, each checked in both directions."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.compatibility import LEVELS, can_read, check, normalize_level, parse
from schemas.errors import SchemaError
from schemas.topics import CLICKSTREAM, TOPICS


def record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def fld(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(name: str, symbols: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": name, "symbols": symbols, **extra}


def clickstream() -> dict[str, Any]:
    return copy.deepcopy(CLICKSTREAM.schema)


def field_of(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


# --- records -----------------------------------------------------------------------------------------
def test_identical_schemas_are_compatible_for_every_contract_topic():
    for spec in TOPICS:
        assert can_read(spec.schema, spec.schema) == [], spec.name


def test_field_added_without_default_cannot_read_old_data_and_names_the_field():
    new = clickstream()
    new["fields"].append(fld("discount", "double"))
    assert can_read(new, CLICKSTREAM.schema) == ["Clickstream.discount: field added without a default"]


def test_field_added_with_default_reads_old_data():
    new = clickstream()
    new["fields"].append(fld("discount", "double", default=0.0))
    assert can_read(new, CLICKSTREAM.schema) == []


def test_writer_only_field_is_skipped_by_the_reader():
    old = record("R", fld("a", "int"), fld("b", "string"))
    new = record("R", fld("a", "int"))
    assert can_read(new, old) == []
    assert can_read(old, new) == ["R.b: field added without a default"]


def test_field_rename_resolves_through_reader_field_alias():
    old = record("R", fld("price", "double"))
    new = record("R", fld("amount", "double", aliases=["price"]))
    assert can_read(new, old) == []
    assert can_read(record("R", fld("amount", "double")), old) == ["R.amount: field added without a default"]


def test_records_match_by_unqualified_name_or_reader_alias():
    old = record("Old", fld("a", "int"), namespace="x")
    assert can_read(record("Old", fld("a", "int"), namespace="y"), old) == []
    assert can_read(record("New", fld("a", "int"), namespace="x", aliases=["Old"]), old) == []
    problems = can_read(record("New", fld("a", "int"), namespace="x"), old)
    assert problems == ["<root>: record renamed from Old to New; add alias 'Old' to it"]


def test_nested_record_problem_names_the_full_field_path():
    def envelope(address_fields: list[dict[str, Any]]) -> dict[str, Any]:
        return record("Envelope", fld("after", ["null", record("Row", *address_fields)], default=None))

    old = envelope([fld("id", "long")])
    new = envelope([fld("id", "long"), fld("email", "string")])
    assert can_read(new, old) == ["Envelope.after.email: field added without a default"]


# --- primitives and promotions -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("writer", "reader"),
    [("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
     ("float", "double"), ("string", "bytes"), ("bytes", "string")],
)
def test_spec_promotions_are_readable_but_not_the_reverse_numeric_ones(writer: str, reader: str):
    assert can_read(record("R", fld("x", reader)), record("R", fld("x", writer))) == []
    reverse = can_read(record("R", fld("x", writer)), record("R", fld("x", reader)))
    if {writer, reader} == {"string", "bytes"}:
        assert reverse == []
    else:
        assert reverse == [f"R.x: type changed from {reader} to {writer}, and Avro cannot read {reader} data as {writer}"]


def test_unrelated_primitive_change_is_refused():
    assert can_read(record("R", fld("x", "string")), record("R", fld("x", "int"))) != []
    assert can_read(record("R", fld("x", "boolean")), record("R", fld("x", "null"))) != []


def test_logical_type_is_ignored_the_underlying_type_decides():
    plain = record("R", fld("ts", "long"))
    millis = record("R", fld("ts", {"type": "long", "logicalType": "timestamp-millis"}))
    micros_int = record("R", fld("ts", {"type": "int", "logicalType": "date"}))
    assert can_read(millis, plain) == [] and can_read(plain, millis) == []
    assert can_read(millis, micros_int) == []  # int -> long promotion
    assert can_read(micros_int, millis) != []


# --- enums ----------------------------------------------------------------------------------------------
def test_removed_enum_symbol_without_default_is_refused_naming_the_field():
    new = clickstream()
    event_type = field_of(new, "event_type")["type"]
    event_type["symbols"].remove("search")
    del event_type["default"]
    assert can_read(new, CLICKSTREAM.schema) == [
        "Clickstream.event_type: enum EventType lost symbol(s) search and has no enum default"
    ]


def test_removed_enum_symbol_is_read_as_the_reader_enum_default():
    new = clickstream()
    field_of(new, "event_type")["type"]["symbols"].remove("search")  # keeps default page_view
    assert can_read(new, CLICKSTREAM.schema) == []


def test_added_enum_symbol_is_readable_by_new_reader_only():
    old = record("R", fld("e", enum("E", ["a", "b"])))
    new = record("R", fld("e", enum("E", ["a", "b", "c"])))
    assert can_read(new, old) == []
    assert can_read(old, new) == ["R.e: enum E lost symbol(s) c and has no enum default"]


def test_renamed_enum_needs_an_alias():
    old = record("R", fld("e", enum("E", ["a"])))
    assert can_read(record("R", fld("e", enum("F", ["a"]))), old) == [
        "R.e: enum renamed from E to F; add alias 'E' to it"
    ]
    assert can_read(record("R", fld("e", enum("F", ["a"], aliases=["E"]))), old) == []


# --- fixed, arrays, maps ---------------------------------------------------------------------------------
def test_fixed_needs_same_name_and_size():
    old = record("R", fld("f", {"type": "fixed", "name": "H", "size": 16}))
    assert can_read(record("R", fld("f", {"type": "fixed", "name": "H", "size": 16})), old) == []
    assert can_read(record("R", fld("f", {"type": "fixed", "name": "H", "size": 32})), old) == [
        "R.f: fixed H changed size from 16 to 32 bytes"
    ]
    assert can_read(record("R", fld("f", {"type": "fixed", "name": "G", "size": 16})), old) != []


def test_array_items_and_map_values_are_resolved_recursively():
    old = record("R", fld("xs", {"type": "array", "items": "int"}), fld("m", {"type": "map", "values": "float"}))
    wider = record("R", fld("xs", {"type": "array", "items": "long"}), fld("m", {"type": "map", "values": "double"}))
    assert can_read(wider, old) == []
    assert can_read(old, wider) == [
        "R.xs[]: type changed from long to int, and Avro cannot read long data as int",
        "R.m{}: type changed from double to float, and Avro cannot read double data as float",
    ]


def test_array_of_records_names_the_item_field():
    old = record("R", fld("items", {"type": "array", "items": record("Item", fld("id", "string"))}))
    new = record("R", fld("items", {"type": "array", "items": record("Item", fld("id", "string"), fld("qty", "int"))}))
    assert can_read(new, old) == ["R.items[].qty: field added without a default"]


def test_array_to_map_is_refused():
    old = record("R", fld("x", {"type": "array", "items": "string"}))
    new = record("R", fld("x", {"type": "map", "values": "string"}))
    assert can_read(new, old) == [
        "R.x: type changed from array<string> to map<string>, and Avro cannot read array<string> data as map<string>"
    ]


# --- unions ------------------------------------------------------------------------------------------------
def test_making_a_field_optional_reads_old_data_but_old_readers_cannot_read_nulls():
    required = record("R", fld("x", "string"))
    optional = record("R", fld("x", ["null", "string"], default=None))
    assert can_read(optional, required) == []
    assert can_read(required, optional) == ["R.x: values of type null in existing data cannot be read as string"]


def test_every_writer_union_branch_must_find_a_reader_branch():
    old = record("R", fld("x", ["null", "string", "int"], default=None))
    assert can_read(record("R", fld("x", ["null", "string", "long"], default=None)), old) == []  # int -> long
    assert can_read(record("R", fld("x", ["null", "string"], default=None)), old) == [
        "R.x: values of type int in existing data cannot be read as [null, string]"
    ]


def test_reader_union_needs_some_branch_for_a_plain_writer():
    assert can_read(["null", "long"], "int") == []
    assert can_read(["null", "string"], "int") == [
        "<root>: values of type int in existing data cannot be read as [null, string]"
    ]


def test_union_of_records_reports_the_field_problem_of_the_same_named_branch():
    old = record("R", fld("after", ["null", record("Row", fld("id", "long"))], default=None))
    new = record("R", fld("after", ["null", record("Row", fld("id", "long"), fld("n", "int"))], default=None))
    assert can_read(new, old) == ["R.after.n: field added without a default"]


# --- named references and recursion -------------------------------------------------------------------------
def test_type_referenced_by_name_after_its_definition_is_resolved():
    def schema(symbols: list[str]) -> dict[str, Any]:
        return record("R", fld("a", enum("Color", symbols), default=symbols[0]), fld("b", "Color", default=symbols[0]),
                      namespace="shop")

    assert can_read(schema(["red", "blue"]), schema(["red", "blue"])) == []
    problems = can_read(schema(["red"]), schema(["red", "blue"]))
    assert problems == [
        "R.a: enum Color lost symbol(s) blue and has no enum default",
        "R.b: enum Color lost symbol(s) blue and has no enum default",
    ]


def test_reference_by_full_name_from_another_namespace():
    inner = record("Money", fld("cents", "long"), namespace="common")
    schema = record("Order", fld("price", inner), fld("tax", "common.Money"), namespace="shop")
    assert can_read(schema, schema) == []


def test_recursive_record_terminates_and_finds_nested_changes():
    def node(value_type: str) -> dict[str, Any]:
        return record("Node", fld("v", value_type), fld("next", ["null", "Node"], default=None))

    assert can_read(node("long"), node("int")) == []
    assert can_read(node("int"), node("long")) == [
        "Node.v: type changed from long to int, and Avro cannot read long data as int"
    ]


# --- check() and levels ---------------------------------------------------------------------------------------
def _v1() -> dict[str, Any]:
    return record("R", fld("a", "int"))


def _v2() -> dict[str, Any]:
    return record("R", fld("a", "int"), fld("b", "string", default=""))


def _v3() -> dict[str, Any]:
    return record("R", fld("b", "string", default=""), fld("c", "long"))  # needs c: not BACKWARD


def test_none_accepts_anything_but_still_validates():
    assert check(_v3(), [_v1()], "NONE") == []
    with pytest.raises(SchemaError):
        check("{not json", [], "NONE")


def test_backward_checks_the_latest_only_and_transitive_checks_all():
    v2_without_a = record("R", fld("b", "string", default=""))
    v3 = record("R", fld("a", "int"), fld("b", "string", default=""))  # a back, no default
    assert check(v3, [_v1(), v2_without_a], "BACKWARD") == ["R.a: field added without a default"]
    assert check(v2_without_a, [_v1(), _v2()], "BACKWARD") == []
    v4 = record("R", fld("b", "string", default=""), fld("d", "int", default=0))
    assert check(v4, [_v1(), _v2()], "BACKWARD_TRANSITIVE") == []
    narrowed = record("R", fld("a", "int", default=0), fld("b", "bytes", default=""))
    assert check(narrowed, [_v1(), _v2()], "BACKWARD_TRANSITIVE") == []
    assert check(_v3(), [_v1(), _v2()], "BACKWARD_TRANSITIVE") == ["R.c: field added without a default"]


def test_forward_means_old_readers_read_new_data():
    removed_required = record("R", fld("b", "string", default=""))
    assert check(removed_required, [_v2()], "FORWARD") == [
        "R.a: field removed, but the old schema needs it and has no default for it"
    ]
    assert check(removed_required, [_v2()], "BACKWARD") == []
    assert check(_v3(), [_v2()], "FORWARD") == ["R.a: field removed, but the old schema needs it and has no default for it"]


def test_forward_transitive_checks_every_old_reader():
    v2 = record("R", fld("a", "int", default=0), fld("b", "string"))
    v3 = record("R", fld("b", "string"))  # v2 can read it (a has a default), v1 cannot
    assert check(v3, [_v1(), v2], "FORWARD") == []
    assert check(v3, [_v1(), v2], "FORWARD_TRANSITIVE") == [
        "R.a: field removed, but the old schema needs it and has no default for it"
    ]


def test_full_needs_both_directions():
    with_default = record("R", fld("a", "int"), fld("b", "string", default=""))
    assert check(with_default, [_v1()], "FULL") == []
    required = record("R", fld("a", "int"), fld("b", "string"))
    assert check(required, [_v1()], "FULL") == ["R.b: field added without a default"]
    dropped = record("R", fld("b", "string", default=""))
    assert check(dropped, [_v1(), with_default], "FULL_TRANSITIVE") == [
        "R.a: field removed, but the old schema needs it and has no default for it"
    ]


def test_forward_enum_symbol_added_without_default_is_named():
    old = record("R", fld("e", enum("E", ["a"])))
    new = record("R", fld("e", enum("E", ["a", "b"])))
    assert check(new, [old], "FORWARD") == ["R.e: enum E gained symbol(s) b, which the old schema's enum has no default for"]


def test_first_version_is_always_accepted_and_levels_are_case_insensitive():
    assert all(check(_v3(), [], level) == [] for level in LEVELS)
    assert normalize_level("backward_transitive") == "BACKWARD_TRANSITIVE"
    with pytest.raises(SchemaError, match="use one of NONE, BACKWARD"):
        check(_v1(), [_v1()], "SIDEWAYS")


def test_schemas_may_be_json_text():
    assert can_read(json.dumps(_v2()), json.dumps(_v1())) == []
    assert can_read('"long"', "int") == []


# --- malformed schemas ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ("{not json", "not valid JSON"),
        (record("R", fld("x", "Nope")), "Nope"),
        (record("R", fld("x", "int", default="zero")), "Default value"),
        (record("R", fld("x", "int"), fld("x", "long")), "field 'x' twice"),
        (record("R", fld("x", ["null", "int"], default=3)), "reorder the union"),
        (record("R", fld("x", ["int", "int"])), "more than one int"),
        ({"type": "record", "name": "R"}, "'fields' list"),
        (enum("E", ["a"], default="z"), "Default value for enum"),
    ],
)
def test_malformed_schema_raises_schema_error_saying_why(schema: Any, says: str):
    with pytest.raises(SchemaError, match=says):
        parse(schema)
    with pytest.raises(SchemaError):
        can_read(schema, _v1())


# --- properties -------------------------------------------------------------------------------------------------
_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
_PRIMITIVE = st.sampled_from(["boolean", "int", "long", "float", "double", "bytes", "string"])
_DEFAULTS = {"boolean": False, "int": 0, "long": 0, "float": 0.0, "double": 0.0, "bytes": "", "string": ""}


@st.composite
def field_types(draw: st.DrawFn, depth: int = 0) -> Any:
    kind = draw(st.sampled_from(["primitive", "optional", "array", "map", "record"] if depth < 2 else ["primitive"]))
    if kind == "primitive":
        return draw(_PRIMITIVE)
    if kind == "optional":
        return ["null", draw(_PRIMITIVE)]
    if kind == "array":
        return {"type": "array", "items": draw(field_types(depth + 1))}
    if kind == "map":
        return {"type": "map", "values": draw(field_types(depth + 1))}
    return draw(records(depth + 1))


@st.composite
def records(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    names = draw(st.lists(_NAMES, min_size=1, max_size=6, unique=True))
    name = f"R{depth}_{draw(st.integers(0, 10**6))}"
    return record(name, *[fld(n, draw(field_types(depth))) for n in names])


def _with_unique_names(schema: dict[str, Any]) -> bool:
    try:
        parse(schema)
        return True
    except SchemaError:
        return False  # two nested records drew the same name


@settings(max_examples=150, deadline=None)
@given(records(), _NAMES, _PRIMITIVE)
def test_adding_a_field_with_a_default_is_always_backward_compatible(old: dict[str, Any], name: str, type_: str):
    if not _with_unique_names(old) or name in {f["name"] for f in old["fields"]}:
        return
    new = copy.deepcopy(old)
    new["fields"].append(fld(name, type_, default=_DEFAULTS[type_]))
    assert can_read(old, old) == []
    assert check(new, [old], "BACKWARD") == []
    assert check(new, [old], "FULL") == []  # old readers skip the new field


@settings(max_examples=150, deadline=None)
@given(records(), st.data())
def test_removing_a_field_is_always_backward_but_forward_only_with_a_default(old: dict[str, Any], data: st.DataObject):
    if not _with_unique_names(old) or len(old["fields"]) < 2:
        return
    victim = data.draw(st.sampled_from(old["fields"]))
    new = copy.deepcopy(old)
    new["fields"] = [f for f in new["fields"] if f["name"] != victim["name"]]
    assert check(new, [old], "BACKWARD") == []
    assert check(new, [old], "FORWARD") == [
        f"{old['name']}.{victim['name']}: field removed, but the old schema needs it and has no default for it"
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(_NAMES, min_size=2, max_size=8, unique=True), st.data())
def test_removing_an_enum_symbol_without_a_default_is_never_backward_compatible(
    symbols: list[str], data: st.DataObject
):
    removed = data.draw(st.sampled_from(symbols))
    old = record("R", fld("e", enum("E", symbols)))
    new = record("R", fld("e", enum("E", [s for s in symbols if s != removed])))
    assert check(new, [old], "BACKWARD") == [f"R.e: enum E lost symbol(s) {removed} and has no enum default"]
    kept = [s for s in symbols if s != removed]
    with_default = record("R", fld("e", enum("E", kept, default=kept[0])))
    assert check(with_default, [old], "BACKWARD") == []


@settings(max_examples=100, deadline=None)
@given(records(), _NAMES, _PRIMITIVE)
def test_when_compatible_fastavro_really_decodes_old_bytes_with_the_new_schema(
    old: dict[str, Any], name: str, type_: str
):
    """The rules agree with an actual Avro decoder on data written with the old schema."""
    if not _with_unique_names(old) or name in {f["name"] for f in old["fields"]}:
        return
    new = copy.deepcopy(old)
    new["fields"].insert(0, fld(name, type_, default=_DEFAULTS[type_]))
    assert can_read(new, old) == []
    writer, reader = parse_schema(old), parse_schema(new)
    buf = io.BytesIO()
    schemaless_writer(buf, writer, _zero(old))
    buf.seek(0)
    decoded = schemaless_reader(buf, writer, reader)
    assert decoded.pop(name) in (_DEFAULTS[type_], b"")  # fastavro hands a bytes default back as str
    assert decoded == _zero(old)


def _zero(schema: Any) -> Any:
    """A minimal valid datum of `schema` (records filled, optionals null, collections empty)."""
    if isinstance(schema, list):
        return None
    if isinstance(schema, str):
        return {"bytes": b"", "string": ""}.get(schema, _DEFAULTS.get(schema))
    if schema["type"] == "record":
        return {f["name"]: _zero(f["type"]) for f in schema["fields"]}
    return [] if schema["type"] == "array" else {}
