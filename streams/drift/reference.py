"""Reference profiles: for one model version, the fixed bins and expected shares of the score and of every
logged feature, computed from a stretch of the prediction log and stored versioned in Redis.

Numeric features (declared int/float) get quantile bins; string features get their most frequent
categories plus `other`. The drift job bins every window with exactly these edges.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from schemas.errors import ReplayError
from streams.drift.psi import Bins, categorical_bins, numeric_bins
from streams.features.definitions import FEATURES, REQUEST_FEATURES

SCORE = "score"  # the model's output is profiled like a numeric feature under this name
# what drift watches: the score and every model input (not e.g. `last_event_ts`, a clock that always "drifts")
DTYPES: dict[str, str] = {**{f.qualified: f.dtype for f in FEATURES if f.model_input},
                          **{r.qualified: r.dtype for r in REQUEST_FEATURES}, SCORE: "float"}


def reference_key(model: str, version: str) -> str:
    return f"drift:reference:{model}:{version}"


@dataclass
class Profile:
    """The bins of every profiled feature of one model version, and where they came from."""

    model: str
    model_version: str
    bins: dict[str, Bins]
    rows: int
    since_ms: int | None = None
    until_ms: int | None = None
    source: str = ""
    automatic: bool = False  # built by the drift job from the version's own first windows (its period is not measured)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> str:
        return json.dumps({**{k: v for k, v in self.__dict__.items() if k != "bins"},
                           "bins": {name: b.to_dict() for name, b in self.bins.items()}})

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        data = json.loads(text)
        data["bins"] = {name: Bins.from_dict(b) for name, b in data["bins"].items()}
        return cls(**data)


def profile_of(model: str, version: str, rows: list[dict[str, Any]], bins: int = 10, **info: Any) -> Profile:
    """Bins of the score and every feature seen in `rows` (each: {"score": .., "features": {..}})."""
    columns: dict[str, list[Any]] = {SCORE: [r["score"] for r in rows]}
    for row in rows:
        for name, value in row["features"].items():
            if value is not None and name in DTYPES:
                columns.setdefault(name, []).append(value)
    out = {}
    for name, values in columns.items():
        out[name] = categorical_bins(values) if DTYPES[name] == "str" else \
            numeric_bins(np.asarray(values, dtype=np.float64), bins)
    return Profile(model, version, out, len(rows), **info)


def build_profiles(table: pa.Table, *, model: str | None = None, bins: int = 10, since_ms: int | None = None,
                   until_ms: int | None = None, source: str = "") -> list[Profile]:
    """One profile per (model, model version) in a prediction-log table (as `read_source` returns it)."""
    needed = ["model", "model_version", "score", "ts", "features_json"]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ReplayError(f"the prediction log lacks {', '.join(missing)}; read it from the topic or export "
                          "it with those columns")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m, v, score, ts, feats in zip(*(table.column(c).to_pylist() for c in needed)):
        if (model and m != model) or (since_ms is not None and ts < since_ms) or (until_ms is not None and ts > until_ms):
            continue
        groups.setdefault((m, v), []).append({"score": score, "features": json.loads(feats) if feats else {}})
    if not groups:
        raise ReplayError("no logged prediction in that range" + (f" for model {model!r}" if model else "")
                          + "; widen --since/--until or check --model")
    return [profile_of(m, v, rows, bins, since_ms=since_ms, until_ms=until_ms, source=source)
            for (m, v), rows in sorted(groups.items())]


class ProfileStore:
    """Reference profiles in Redis, one per model version (`drift:reference:{model}:{version}`)."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def save(self, profile: Profile) -> str:
        key = reference_key(profile.model, profile.model_version)
        self.client.set(key, profile.to_json())
        return key

    def load(self, model: str, version: str) -> Profile | None:
        raw = self.client.get(reference_key(model, version))
        return Profile.from_json(raw) if raw else None
