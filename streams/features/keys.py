"""Redis key formats of the online store, stated once (DESIGN.md: `feat:{entity}:{id}`)."""

from __future__ import annotations

from typing import Any

from streams.features.definitions import FEATURES

TS_FIELD = "_ts"
ACTIVE_NAMESPACE_KEY = "streamml:features:active_namespace"


def feature_key(entity: str, entity_id: str, namespace: str = "") -> str:
    """`feat:user:u1`, or `ns:{name}:feat:user:u1` inside a replay namespace."""
    return f"ns:{namespace}:feat:{entity}:{entity_id}" if namespace else f"feat:{entity}:{entity_id}"


_DTYPES = {(f.entity.name, f.name): f.dtype for f in FEATURES}


def encode_value(value: Any) -> str:
    """Redis stores strings; floats keep full precision (repr round-trips exactly)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse_int(raw: str | bytes) -> int:
    try:
        return int(raw)  # int() and float() take bytes as they are: no decode on the serving path
    except ValueError:  # written as "3.0": the same value
        return int(float(raw))


def _parse_str(raw: str | bytes) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


PARSERS: dict[str, Any] = {"int": _parse_int, "float": float, "str": _parse_str}  # dtype -> stored text -> value


def decode_value(entity: str, name: str, raw: str | bytes) -> Any:
    """Inverse of `encode_value`, typed by the feature's declared dtype."""
    return PARSERS["int" if name == TS_FIELD else _DTYPES.get((entity, name), "str")](raw)


# Namespaces (blue/green rebuilds): `default` is the unprefixed keys above.
DEFAULT_NAMESPACE = "default"
NAMESPACES_KEY = "streamml:features:namespaces"  # set of every namespace ever built


def namespace_meta_key(name: str) -> str:
    """Hash describing one namespace: status (building|complete|failed|retired), source, counts, times."""
    return f"streamml:features:namespace:{name}"


def namespace_prefix(name: str) -> str:
    """The `namespace` argument of `feature_key` for a namespace name ('' for the default one)."""
    return "" if name in ("", DEFAULT_NAMESPACE) else name
