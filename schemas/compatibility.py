"""Avro schema compatibility by the rules of Avro 1.11 "Schema Resolution", as plain data in, problems out.

Pure (no I/O): the registry calls `check` before accepting a version; each problem names a field path.
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Literal

from fastavro import parse_schema as _fastavro_parse

from schemas.errors import SchemaError

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# writer type -> reader types it may be read as (the spec's promotions)
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
LEVELS = (
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE",
)
DEFAULT_LEVEL = "BACKWARD"
_SPEC = "https://avro.apache.org/docs/1.11.1/specification/"

Direction = Literal["backward", "forward"]


# --- the schema as a graph of types; a named type referenced twice is the same object ---------------
@dataclass(eq=False)
class _Primitive:
    name: str


@dataclass(eq=False)
class _Named:
    kind: str
    fullname: str
    aliases: frozenset[str]

    @property
    def name(self) -> str:
        return self.fullname.rsplit(".", 1)[-1]


@dataclass(eq=False)
class _Field:
    name: str
    type: _Type
    has_default: bool
    aliases: tuple[str, ...]


@dataclass(eq=False)
class _Record(_Named):
    fields: list[_Field] = field(default_factory=list)


@dataclass(eq=False)
class _Enum(_Named):
    symbols: tuple[str, ...] = ()
    default: str | None = None


@dataclass(eq=False)
class _Fixed(_Named):
    size: int = 0


@dataclass(eq=False)
class _Array:
    items: _Type


@dataclass(eq=False)
class _Map:
    values: _Type


@dataclass(eq=False)
class _Union:
    branches: list[_Type]


_Type = _Primitive | _Record | _Enum | _Fixed | _Array | _Map | _Union


def parse(schema: Any) -> Any:
    """The schema as a JSON value, after checking it is well-formed; `SchemaError` says what is wrong.

    Accepts JSON text, a bare primitive name (`string`) or an already-parsed object.
    """
    return _load(schema)[0]


def _load(schema: Any) -> tuple[Any, _Type]:
    value = _json_value(schema)
    try:
        _fastavro_parse(deepcopy(value), named_schemas={}, _write_hint=False)
    except Exception as exc:  # fastavro raises SchemaParseException, UnknownType, KeyError…
        raise SchemaError(f"invalid Avro schema: {type(exc).__name__}: {exc}. Fix it (see {_SPEC}).") from exc
    return value, _Parser().type(value, "")  # the parser adds checks fastavro is lenient about


def _json_value(schema: Any) -> Any:
    if not isinstance(schema, str):
        return schema
    text = schema.strip()
    if text in PRIMITIVES:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"schema is not valid JSON ({exc}); send the Avro schema as JSON text") from exc


class _Parser:
    """Builds the type graph, resolving names against namespaces as the spec says."""

    def __init__(self) -> None:
        self.names: dict[str, _Named] = {}

    def type(self, node: Any, namespace: str) -> _Type:
        if isinstance(node, str):
            return _Primitive(node) if node in PRIMITIVES else self._lookup(node, namespace)
        if isinstance(node, list):
            return self._union(node, namespace)
        if not isinstance(node, dict):
            raise SchemaError(f"invalid Avro schema: {node!r} is not a type; use a name, an object or a list")
        kind = node.get("type")
        if kind in ("record", "error"):
            return self._record(node, namespace)
        if kind == "enum":
            fullname, ns = self._fullname(node, namespace)
            symbols = tuple(node.get("symbols") or ())
            return self._define(_Enum("enum", fullname, self._aliases(node, ns), symbols, node.get("default")))
        if kind == "fixed":
            fullname, ns = self._fullname(node, namespace)
            return self._define(_Fixed("fixed", fullname, self._aliases(node, ns), int(node.get("size", 0))))
        if kind == "array":
            return _Array(self.type(node.get("items"), namespace))
        if kind == "map":
            return _Map(self.type(node.get("values"), namespace))
        return self.type(kind, namespace)  # {"type": "long", "logicalType": ...}: the underlying type decides

    def _record(self, node: dict[str, Any], namespace: str) -> _Record:
        fullname, ns = self._fullname(node, namespace)
        record = _Record("record", fullname, self._aliases(node, ns))
        self._define(record)  # before the fields, so a field may refer to its own record
        fields = node.get("fields")
        if not isinstance(fields, list):
            raise SchemaError(f"invalid Avro schema: record {fullname} needs a 'fields' list")
        seen: set[str] = set()
        for spec in fields:
            name = spec.get("name") if isinstance(spec, dict) else None
            if not isinstance(name, str) or not name:
                raise SchemaError(f"invalid Avro schema: a field of record {fullname} has no name")
            if name in seen:
                raise SchemaError(f"invalid Avro schema: record {fullname} has field {name!r} twice")
            seen.add(name)
            ftype = self.type(spec.get("type"), ns)
            if "default" in spec and isinstance(ftype, _Union):
                _check_union_default(f"{record.name}.{name}", ftype, spec["default"])
            record.fields.append(_Field(name, ftype, "default" in spec, tuple(spec.get("aliases") or ())))
        return record

    def _union(self, node: list[Any], namespace: str) -> _Union:
        union = _Union([self.type(branch, namespace) for branch in node])
        seen: set[str] = set()
        for branch in union.branches:
            if isinstance(branch, _Union):
                raise SchemaError("invalid Avro schema: a union may not directly contain another union")
            key = branch.fullname if isinstance(branch, _Named) else _kind(branch)
            if key in seen:
                raise SchemaError(f"invalid Avro schema: union {_describe(union)} has more than one {key}")
            seen.add(key)
        return union

    def _fullname(self, node: dict[str, Any], namespace: str) -> tuple[str, str]:
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaError(f"invalid Avro schema: a {node.get('type')} needs a 'name'")
        if "." in name:
            return name, name.rsplit(".", 1)[0]
        ns = (node["namespace"] if "namespace" in node else namespace) or ""
        return (f"{ns}.{name}" if ns else name), ns

    @staticmethod
    def _aliases(node: dict[str, Any], namespace: str) -> frozenset[str]:
        return frozenset(a if "." in a or not namespace else f"{namespace}.{a}" for a in node.get("aliases") or ())

    def _define(self, named: _Named) -> Any:
        if named.fullname in self.names:
            raise SchemaError(f"invalid Avro schema: type {named.fullname} is defined twice; refer to it by name")
        self.names[named.fullname] = named
        return named

    def _lookup(self, name: str, namespace: str) -> _Type:
        candidates = [name] if "." in name or not namespace else [f"{namespace}.{name}", name]
        for candidate in candidates:
            if candidate in self.names:
                return self.names[candidate]  # type: ignore[return-value]
        raise SchemaError(f"invalid Avro schema: unknown type {name!r}; define it before referring to it")


def _check_union_default(where: str, union: _Union, default: Any) -> None:
    """The spec: a union field's default belongs to the union's FIRST branch (fastavro accepts any)."""
    first_is_null = isinstance(union.branches[0], _Primitive) and union.branches[0].name == "null"
    if (default is None) != first_is_null:
        raise SchemaError(
            f"invalid Avro schema: field {where} has default {json.dumps(default)} but a union's default must "
            f"match its first type ({_describe(union.branches[0])}); reorder the union"
        )


def _kind(t: _Type) -> str:
    return t.name if isinstance(t, _Primitive) else type(t).__name__.lstrip("_").lower()


def _describe(t: _Type) -> str:
    if isinstance(t, _Primitive | _Named):
        return t.name
    if isinstance(t, _Array):
        return f"array<{_describe(t.items)}>"
    if isinstance(t, _Map):
        return f"map<{_describe(t.values)}>"
    return "[" + ", ".join(_describe(b) for b in t.branches) + "]"


# --- resolution --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Problem:
    path: str
    code: str
    args: dict[str, str] = field(default_factory=dict)


# code -> (wording when the reader is the new schema, wording when the reader is the old schema)
_WORDING = {
    "missing_field": (
        "field added without a default",
        "field removed, but the old schema needs it and has no default for it",
    ),
    "type": (
        "type changed from {writer} to {reader}, and Avro cannot read {writer} data as {reader}",
        "type changed from {reader} to {writer}, and readers on the old schema cannot read {writer} as {reader}",
    ),
    "branch": (
        "values of type {writer} in existing data cannot be read as {reader}",
        "values of type {writer} allowed by the new schema cannot be read as {reader} by the old schema",
    ),
    "name": (
        "{kind} renamed from {writer} to {reader}; add alias '{writer}' to it",
        "{kind} renamed from {reader} to {writer}; readers on the old schema only know {reader}",
    ),
    "fixed_size": (
        "fixed {name} changed size from {writer} to {reader} bytes",
        "fixed {name} changed size from {reader} to {writer} bytes",
    ),
    "enum_symbols": (
        "enum {name} lost symbol(s) {symbols} and has no enum default",
        "enum {name} gained symbol(s) {symbols}, which the old schema's enum has no default for",
    ),
}


def _render(problem: _Problem, direction: Direction) -> str:
    template = _WORDING[problem.code][0 if direction == "backward" else 1]
    text = template.format(**problem.args)
    return f"{problem.path or '<root>'}: {text}"


class _Resolver:
    """Walks reader and writer together, collecting what a reader could not resolve."""

    def __init__(self) -> None:
        self.problems: list[_Problem] = []
        self._active: set[tuple[int, int]] = set()  # record pairs being compared: recursion assumes success

    def resolve(self, reader: _Type, writer: _Type, path: str) -> None:
        if isinstance(writer, _Union):
            for branch in writer.branches:  # any branch may have been written: each must be readable
                self._branch(reader, branch, path)
        elif isinstance(reader, _Union):
            self._into_union(reader, writer, path)
        else:
            self._same_kind(reader, writer, path)

    def _branch(self, reader: _Type, writer: _Type, path: str) -> None:
        if isinstance(reader, _Union):
            self._into_union(reader, writer, path)
        elif _shallow_match(reader, writer):
            self._same_kind(reader, writer, path)
        else:
            self.problems.append(_mismatch(path, "branch", reader, writer))

    def _into_union(self, reader: _Union, writer: _Type, path: str) -> None:
        candidates = [b for b in reader.branches if _shallow_match(b, writer)]
        trials = []
        for branch in candidates:
            trial = _Resolver()
            trial._active = self._active
            trial._same_kind(branch, writer, path)
            if not trial.problems:
                return
            trials.append(trial.problems)
        if trials:
            self.problems.extend(trials[0])  # the same-named branch's field-level problems say the most
        else:
            self.problems.append(_mismatch(path, "branch", reader, writer))

    def _same_kind(self, reader: _Type, writer: _Type, path: str) -> None:
        if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
            if reader.name != writer.name and reader.name not in PROMOTIONS.get(writer.name, ()):
                self.problems.append(_mismatch(path, "type", reader, writer))
        elif isinstance(reader, _Array) and isinstance(writer, _Array):
            self.resolve(reader.items, writer.items, f"{path}[]")
        elif isinstance(reader, _Map) and isinstance(writer, _Map):
            self.resolve(reader.values, writer.values, f"{path}{{}}")
        elif isinstance(reader, _Named) and isinstance(writer, _Named) and reader.kind == writer.kind:
            if not _names_match(reader, writer):
                names = {"kind": reader.kind, "reader": reader.name, "writer": writer.name}
                self.problems.append(_Problem(path, "name", names))
            elif isinstance(reader, _Record) and isinstance(writer, _Record):
                self._record(reader, writer, path or reader.name)
            elif isinstance(reader, _Enum) and isinstance(writer, _Enum):
                missing = [s for s in writer.symbols if s not in reader.symbols]
                if missing and reader.default is None:
                    symbols = ", ".join(missing)
                    self.problems.append(_Problem(path, "enum_symbols", {"name": reader.name, "symbols": symbols}))
            elif isinstance(reader, _Fixed) and isinstance(writer, _Fixed) and reader.size != writer.size:
                sizes = {"name": reader.name, "reader": str(reader.size), "writer": str(writer.size)}
                self.problems.append(_Problem(path, "fixed_size", sizes))
        else:
            self.problems.append(_mismatch(path, "type", reader, writer))

    def _record(self, reader: _Record, writer: _Record, path: str) -> None:
        key = (id(reader), id(writer))
        if key in self._active:
            return
        self._active.add(key)
        try:
            by_name = {f.name: f for f in writer.fields}
            for rfield in reader.fields:
                wfield = by_name.get(rfield.name) or next(
                    (by_name[a] for a in rfield.aliases if a in by_name), None
                )
                fpath = f"{path}.{rfield.name}"
                if wfield is not None:
                    self.resolve(rfield.type, wfield.type, fpath)
                elif not rfield.has_default:
                    self.problems.append(_Problem(fpath, "missing_field"))
        finally:
            self._active.discard(key)


def _mismatch(path: str, code: str, reader: _Type, writer: _Type) -> _Problem:
    return _Problem(path, code, {"reader": _describe(reader), "writer": _describe(writer)})


def _names_match(reader: _Named, writer: _Named) -> bool:
    """The spec matches named types by unqualified name, or by a reader alias (as Java and fastavro do)."""
    return reader.name == writer.name or writer.fullname in reader.aliases or writer.name in reader.aliases


def _shallow_match(reader: _Type, writer: _Type) -> bool:
    """Whether the two could match at all (same kind and name, or a promotion), ignoring their insides."""
    if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
        return reader.name == writer.name or reader.name in PROMOTIONS.get(writer.name, ())
    if isinstance(reader, _Named) and isinstance(writer, _Named):
        return reader.kind == writer.kind and _names_match(reader, writer)
    return type(reader) is type(writer) and not isinstance(reader, _Union | _Primitive)


def _problems(reader: Any, writer: Any, direction: Direction) -> list[str]:
    resolver = _Resolver()
    resolver.resolve(_load(reader)[1], _load(writer)[1], "")
    return _unique(_render(p, direction) for p in resolver.problems)


def can_read(reader: Any, writer: Any) -> list[str]:
    """Problems a reader of schema `reader` would have with data written with `writer`; [] = compatible.

    Worded as if `reader` is the newer schema (a BACKWARD check), e.g.
    `Clickstream.discount: field added without a default`.
    """
    return _problems(reader, writer, "backward")


def normalize_level(level: str) -> str:
    """The canonical spelling of a compatibility level; `SchemaError` listing the valid ones otherwise."""
    if not isinstance(level, str) or level.strip().upper() not in LEVELS:
        raise SchemaError(f"unknown compatibility level {level!r}; use one of {', '.join(LEVELS)}")
    return level.strip().upper()


def check(new: Any, existing: list[Any], level: str = DEFAULT_LEVEL) -> list[str]:
    """Problems registering `new` after `existing` (oldest first) under `level`; [] = allowed.

    BACKWARD: `new` reads data written with the old schema(s); FORWARD: old readers read `new`'s data;
    FULL: both. Non-transitive levels compare with the latest only, *_TRANSITIVE with every one.
    """
    level = normalize_level(level)
    parse(new)
    if level == "NONE" or not existing:
        return []
    olds = existing if level.endswith("_TRANSITIVE") else existing[-1:]
    found: list[str] = []
    for old in reversed(olds):  # newest first: the most relevant problems lead
        if level.startswith(("BACKWARD", "FULL")):
            found += _problems(new, old, "backward")
        if level.startswith(("FORWARD", "FULL")):
            found += _problems(old, new, "forward")
    return _unique(found)


def _unique(messages: Any) -> list[str]:
    return list(dict.fromkeys(messages))
