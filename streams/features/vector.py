"""The feature vector of one prediction: online hashes decoded and typed, declared defaults where a value
is missing, plus the request-time features. Pure: serving passes in what it read from Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.features.definitions import ENTITIES, HOUR_MS, REQUEST_FEATURES, features_of
from streams.features.keys import PARSERS, TS_FIELD

_TS = TS_FIELD.encode()
_parse_ts = PARSERS["int"]
# entity -> ((hash field as bytes, qualified name, parser, default), ...), computed once
_STORED = {e.name: tuple((f.name.encode(), f.qualified, PARSERS[f.dtype], f.default) for f in features_of(e))
           for e in ENTITIES}
ENTITY_NAMES: tuple[str, ...] = tuple(_STORED)


def stored_values(entity: str, raw: Mapping[bytes, bytes] | None) -> tuple[dict[str, Any], int | None]:
    """Typed values of one entity's hash with defaults filled in, and the event time it reflects (None if absent)."""
    out: dict[str, Any] = {}
    return out, fill_stored(entity, raw, out)


def _compile_fill(entity: str) -> Any:
    """`fill(get, into)` for one entity as straight-line code (about 2.5x faster than looping over `_STORED`).
    Ints are parsed with `int` alone: a value stored as "3.0" raises ValueError, and `fill_stored` then
    takes the general loop."""
    env: dict[str, Any] = {}
    lines = ["def fill(get, into):"]
    for n, (field_name, qualified, parse, default) in enumerate(_STORED[entity]):
        env[f"p{n}"], env[f"d{n}"] = int if parse is PARSERS["int"] else parse, default
        lines.append(f"    v = get({field_name!r})")
        lines.append(f"    into[{qualified!r}] = d{n} if v is None else p{n}(v)")
    exec(compile("\n".join(lines), f"<fill {entity}>", "exec"), env)  # noqa: S102 - names from the feature list
    return env["fill"]


_FILL = {name: _compile_fill(name) for name in ENTITY_NAMES}


def fill_stored(entity: str, raw: Mapping[bytes, bytes] | None, into: dict[str, Any]) -> int | None:
    """`stored_values` written into the caller's vector (no dict per entity): typed values of one entity's
    hash, declared defaults where missing; returns the event time the hash reflects (None if absent)."""
    if raw:
        get = raw.get
        try:
            _FILL[entity](get, into)
        except ValueError:
            for field_name, qualified, parse, default in _STORED[entity]:
                value = get(field_name)
                into[qualified] = default if value is None else parse(value)
        ts = get(_TS)
        return _parse_ts(ts) if ts is not None else None
    for _f, qualified, _p, default in _STORED[entity]:
        into[qualified] = default
    return None


def defaults_of(entity: str) -> dict[str, Any]:
    """Every stored feature of `entity` at its declared default (what serving uses without Redis)."""
    return {qualified: default for _f, qualified, _p, default in _STORED[entity]}


_TYPES = {"int": int, "float": float, "str": str}
_REQUEST = tuple((f.qualified, f.source, f.context_field, _TYPES[f.dtype], f.default) for f in REQUEST_FEATURES)


def request_values(context: Mapping[str, Any], ts_ms: int) -> dict[str, Any]:
    """The request-time features of one request: from `context` (typed, default when absent) or its time."""
    out: dict[str, Any] = {}
    for qualified, source, context_field, cast, default in _REQUEST:
        if source == "ts.hour_of_day":
            out[qualified] = (ts_ms // HOUR_MS) % 24
            continue
        value = context.get(context_field) if context_field else None
        out[qualified] = default if value is None else cast(value)
    return out

