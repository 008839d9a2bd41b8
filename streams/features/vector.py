"""The feature vector of one prediction: online hashes decoded and typed, declared defaults where a value
is missing, plus the request-time features. Pure: serving passes in what it read from Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.features.definitions import ENTITIES, HOUR_MS, REQUEST_FEATURES, features_of
from streams.features.keys import TS_FIELD, decode_typed

_TS = TS_FIELD.encode()
# entity -> ((hash field as bytes, qualified name, dtype, default), ...), computed once
_STORED = {e.name: tuple((f.name.encode(), f.qualified, f.dtype, f.default) for f in features_of(e))
           for e in ENTITIES}
ENTITY_NAMES: tuple[str, ...] = tuple(_STORED)


def stored_values(entity: str, raw: Mapping[bytes, bytes] | None) -> tuple[dict[str, Any], int | None]:
    """Typed values of one entity's hash with defaults filled in, and the event time it reflects (None if absent)."""
    out: dict[str, Any] = {}
    raw = raw or {}
    for field_name, qualified, dtype, default in _STORED[entity]:
        value = raw.get(field_name)
        out[qualified] = default if value is None else decode_typed(dtype, value)
    ts = raw.get(_TS)
    return out, (int(float(ts)) if ts is not None else None)


def defaults_of(entity: str) -> dict[str, Any]:
    """Every stored feature of `entity` at its declared default (what serving uses without Redis)."""
    return {qualified: default for _f, qualified, _d, default in _STORED[entity]}


def request_values(context: Mapping[str, Any], ts_ms: int) -> dict[str, Any]:
    """The request-time features of one request: from `context` (typed, default when absent) or its time."""
    out: dict[str, Any] = {}
    for feat in REQUEST_FEATURES:
        if feat.source == "ts.hour_of_day":
            out[feat.qualified] = (ts_ms // HOUR_MS) % 24
            continue
        value = context.get(feat.context_field) if feat.context_field else None
        if value is None:
            out[feat.qualified] = feat.default
        elif feat.dtype == "int":
            out[feat.qualified] = int(value)
        elif feat.dtype == "float":
            out[feat.qualified] = float(value)
        else:
            out[feat.qualified] = str(value)
    return out

