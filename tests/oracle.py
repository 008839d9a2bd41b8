"""Brute-force recomputation of every feature from the raw events: the reference the flow must equal.

Written from the definitions' documented semantics, not from the tile code: for each key it keeps
all accepted events and recomputes each value by scanning them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from schemas.topics import CDC_TOPIC_NAMES, CLICKSTREAM
from streams.features.definitions import DAY_MS, ENTITIES, FEATURES, Agg, Entity


def accepted_in_partition_order(
    records: Iterable[tuple[int, int, str, dict[str, Any]]], lateness_ms: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """Apply the per-partition lateness rule to (partition, offset, topic, event) records.

    An event of a windowed topic is late when its ts is below the partition's max ts so far minus
    the allowed lateness. Returns (accepted (topic, event) in per-partition order, late events).
    """
    by_part: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for partition, offset, topic, event in records:
        by_part[(topic, partition)].append((offset, event))
    accepted, late = [], []
    for (topic, _), rows in sorted(by_part.items()):
        high = None
        for _, event in sorted(rows, key=lambda r: r[0]):
            if topic == CLICKSTREAM.name:
                ts = event["ts"]
                if high is not None and ts < high - lateness_ms:
                    late.append(event)
                    continue
                high = ts if high is None else max(high, ts)
            accepted.append((topic, event))
    return accepted, late


def _in_window(ts: int, t: int, window) -> bool:
    tile = window.tile_ms
    return t // tile - window.tiles < ts // tile <= t // tile


def expected_features(accepted: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(entity name, id) -> {feature: value} exactly as the flow should leave Redis (plus `_ts`)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for entity in ENTITIES:
        clicks: dict[str, list[dict]] = defaultdict(list)
        changes: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for topic, event in accepted:
            field = entity.id_field(topic)
            if field is None:
                continue
            if topic in CDC_TOPIC_NAMES:
                row = event["after"] or event["before"] or {}
                if row.get(field) is not None:
                    changes[str(row[field])].append((topic, event))
            elif event.get(field) is not None:
                clicks[str(event[field])].append(event)
        for key in set(clicks) | set(changes):
            out[(entity.name, key)] = _entity_values(entity, clicks.get(key, []), changes.get(key, []))
    return out


def _entity_values(entity: Entity, events: list[dict], changes: list[tuple[str, dict]]) -> dict[str, Any]:
    t = max((e["ts"] for e in events), default=0)
    cdc_ts = max((c["ts_ms"] for _, c in changes), default=0)
    attrs = None
    for _, change in changes:  # arrival order
        attrs = None if change["op"] == "d" or change["after"] is None else change["after"]
    latest_session = None
    for e in events:  # the last processed among those with the max ts
        if e["ts"] == t:
            latest_session = e.get("session_id")
    values: dict[str, Any] = {"_ts": max(t, cdc_ts)}
    for f in (f for f in FEATURES if f.entity == entity):
        def window_events(f=f):
            return [e for e in events if _in_window(e["ts"], t, f.window) and f.matches(e)]

        if f.aggregation is Agg.COUNT:
            values[f.name] = len(window_events())
        elif f.aggregation is Agg.SUM:
            values[f.name] = sum(e[f.value_field] for e in window_events() if e.get(f.value_field) is not None)
        elif f.aggregation is Agg.MEAN:
            vals = [e[f.value_field] for e in window_events() if e.get(f.value_field) is not None]
            values[f.name] = sum(vals) / len(vals) if vals else f.default
        elif f.aggregation is Agg.DISTINCT:
            values[f.name] = len({e[f.value_field] for e in window_events() if e.get(f.value_field) is not None})
        elif f.aggregation is Agg.SESSION_COUNT:
            values[f.name] = sum(1 for e in events if latest_session is not None and e.get("session_id") == latest_session)
        elif f.aggregation is Agg.MAX:
            values[f.name] = t
        elif f.aggregation is Agg.ATTRIBUTE:
            if attrs is not None and attrs.get(f.value_field) is not None:
                values[f.name] = attrs[f.value_field]
        elif f.aggregation is Agg.AGE_DAYS:
            if attrs is not None and attrs.get(f.value_field) is not None:
                values[f.name] = (max(t, cdc_ts) - attrs[f.value_field]) // DAY_MS
    for f in FEATURES:
        if f.entity == entity and f.aggregation is Agg.RATIO:
            num, den = values[f.inputs[0]], values[f.inputs[1]]
            values[f.name] = num / den if den else 0.0
    return values


def same(a: Any, b: Any) -> bool:
    """Structural equality of decoded values where NaN equals NaN, -0.0 differs from 0.0 and int differs
    from float (plain == says otherwise on all three)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
