"""`streamml export-training`: one row per label, with every feature as of the labelled event's time.

A label names a prediction; the prediction log gives the entities and the event time of the
request. Each feature is computed from the event log with the live flow's definitions and tile
math (`replay.engine`), over that entity's events with event time <= the request time only: the
ASOF rule (latest value whose feature time <= event time, never a later one) at per-event
resolution. The result is split by time (train < validation < test, no shuffling, no leakage) and
described by a JSON manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.errors import ReplayError
from schemas.topics import LABELS, PREDICTIONS, TopicSpec
from streams.features.definitions import ENTITIES, FEATURES, REQUEST_FEATURES, source_topics
from streams.features.shard import PLANS
from streams.replay.eventlog import iso, read_event_log
from streams.replay.frames import as_int, entity_rows, values_as_of
from streams.replay.topic import TopicRead, topic_records
from streams.settings import FeatureFlowSettings, Settings
from streams.sinks.feature_log import ARROW_TYPES
from streams.sinks.parquet import write_atomic

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class ExportRequest:
    labels: str  # "topic" or a Parquet file/directory
    out: Path
    predictions: str = "topic"  # "topic" or a Parquet file/directory
    split: str = "time"  # time | none
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


def read_source(settings: Settings, where: str, spec: TopicSpec) -> tuple[pa.Table, list[str]]:
    """A topic (`where`="topic", read to its end) or a Parquet file/directory as a table; prediction
    feature maps are carried as JSON (`features_json`). Also returns what was read, for manifests."""
    if where == "topic":
        read = TopicRead(settings.kafka_config(), settings.schema_registry_url, 0)
        records, _, _ = topic_records(read, spec, windowed=False)
        if spec is PREDICTIONS:  # feature maps mix types: carry them as JSON
            records = [{"prediction_id": r["prediction_id"], "entities": r["entities"], "ts": r["ts"],
                        "features_json": json.dumps(r["features"]), "model": r["model"],
                        "model_version": r["model_version"], "score": r["score"]} for r in records]
            schema = pa.schema([("prediction_id", pa.string()), ("entities", pa.map_(pa.string(), pa.string())),
                                ("ts", pa.int64()), ("features_json", pa.string()), ("model", pa.string()),
                                ("model_version", pa.string()), ("score", pa.float64())])
        else:
            schema = pa.schema([(n, t) for n, t in (("prediction_id", pa.string()), ("label", pa.int32()),
                                                    ("ts", pa.int64()))])
            records = [{k: r[k] for k in schema.names} for r in records]
        return pa.Table.from_pylist(records, schema=schema), [f"topic:{spec.name}"]
    path = Path(where)
    if not path.exists():
        raise ReplayError(f"{path} does not exist: pass a Parquet file or directory, or 'topic' to read {spec.name}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ReplayError(f"cannot read {path} as Parquet ({exc}); check the path or re-export the file") from exc
    files = [str(p) for p in sorted(path.rglob("*.parquet"))] if path.is_dir() else [str(path)]
    return table, files


def require_columns(table: pa.Table, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ReplayError(f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}")


def labelled_events(settings: FeatureFlowSettings, req: ExportRequest) -> tuple[pa.Table, dict[str, Any]]:
    """prediction_id, label, event_ts and one id column per entity, plus the served features if logged.

    Labels either name a prediction (joined to the prediction log) or carry the ids and `event_ts`
    themselves (labels from elsewhere)."""
    labels, label_files = read_source(settings, req.labels, LABELS)
    info: dict[str, Any] = {"labels": label_files, "labels_read": labels.num_rows}
    id_columns = [f"{e.name}_id" for e in ENTITIES]
    if all(c in labels.column_names for c in id_columns + ["event_ts"]):
        require_columns(labels, ["label"], "the labels")
        table = labels.select([c for c in ["prediction_id", "label", "event_ts", *id_columns] if c in labels.column_names])
        return table, info
    require_columns(labels, ["prediction_id", "label", "ts"], "the labels")
    predictions, prediction_files = read_source(settings, req.predictions, PREDICTIONS)
    require_columns(predictions, ["prediction_id", "entities", "ts"], "the prediction log")
    info["predictions"] = prediction_files
    # last label per prediction (a corrected label replaces the first)
    labels = labels.take(pc.sort_indices(labels, [("ts", "ascending")]))
    last: dict[str, tuple[int, int]] = {}
    for pid, label, ts in zip(labels.column("prediction_id").to_pylist(), labels.column("label").to_pylist(),
                              as_int(labels.column("ts")).tolist()):
        last[pid] = (label, ts)
    served: dict[str, tuple[int, dict[str, str], dict[str, Any]]] = {}
    if "features_json" in predictions.column_names:
        feats = [json.loads(f) if f else {} for f in predictions.column("features_json").to_pylist()]
    elif "features" in predictions.column_names:
        feats = [dict(f or []) for f in predictions.column("features").to_pylist()]
    else:
        feats = [{}] * predictions.num_rows
    for pid, ents, ts, fv in zip(predictions.column("prediction_id").to_pylist(),
                                 predictions.column("entities").to_pylist(), as_int(predictions.column("ts")).tolist(),
                                 feats):
        if pid in last:
            served[pid] = (ts, dict(ents or []), dict(fv or []))
    rows = []
    for pid, (label, _) in last.items():
        hit = served.get(pid)
        if hit is None:
            continue
        ts, ents, fv = hit
        rows.append({"prediction_id": pid, "label": label, "event_ts": ts,
                     **{f"{e.name}_id": ents.get(e.name) for e in ENTITIES}, "_served": json.dumps(fv)})
    info["labels_unmatched"] = len(last) - len(rows)
    if not rows:
        raise ReplayError(f"none of the {len(last)} labels matches a logged prediction; check that --predictions "
                          "points at the prediction log the labels refer to")
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [("prediction_id", pa.string()), ("label", pa.int32()), ("event_ts", pa.int64())]
        + [(c, pa.string()) for c in id_columns] + [("_served", pa.string())]))
    return table, info


def point_in_time(settings: FeatureFlowSettings, labelled: pa.Table, on_phase: Callable[[str], None] | None = None
                  ) -> tuple[dict[str, list[Any]], dict[str, list[int]], list[str]]:
    """Every feature (qualified name) per labelled row as of its event time, defaults where unknown;
    plus each entity's feature time per row and the event-log files read."""
    times = as_int(labelled.column("event_ts"))
    if on_phase:
        on_phase("read event log")
    slices = read_event_log(settings.data_dir / "events", source_topics(), None, int(times.max()))
    tables = {topic: s.table for topic, s in slices.items()}
    files = sorted(str(p) for s in slices.values() for p in s.files)
    features: dict[str, list[Any]] = {}
    feature_ts: dict[str, list[int]] = {}
    for entity in ENTITIES:
        if on_phase:
            on_phase(f"features of {entity.name}")
        plan = PLANS[entity.name]
        ids = labelled.column(f"{entity.name}_id").to_pylist()
        values = values_as_of(plan, entity_rows(plan, tables), [i if i is not None else "" for i in ids], times)
        ts = values.ts.tolist()
        if any(t > limit for t, limit in zip(ts, times.tolist())):  # the ASOF promise, checked
            raise AssertionError("a feature value later than its event time: please report this bug")
        feature_ts[entity.name] = ts
        for f in (f for f in FEATURES if f.entity == entity):
            column = values.columns[f.name]
            features[f.qualified] = [f.default if (v is None or eid is None) else v for v, eid in zip(column, ids)]
    return features, feature_ts, files


def request_columns(labelled: pa.Table) -> dict[str, pa.Array]:
    """Request-time features exist only in the request: taken as served from the prediction log
    (exact by construction), the declared default where a prediction did not log one."""
    served = [json.loads(raw) if raw else {} for raw in labelled.column("_served").to_pylist()] \
        if "_served" in labelled.column_names else [{}] * labelled.num_rows
    return {r.qualified: pa.array([row.get(r.qualified, r.default) for row in served], ARROW_TYPES[r.dtype])
            for r in REQUEST_FEATURES}


def skew(labelled: pa.Table, features: dict[str, list[Any]]) -> dict[str, Any]:
    """Per feature, how many rows' exported value differs from the value served for that prediction
    (from the prediction log's `features`): training/serving skew, 0 when both paths agree."""
    if "_served" not in labelled.column_names:
        return {}
    compared, differs = 0, {}
    for i, raw in enumerate(labelled.column("_served").to_pylist()):
        served = json.loads(raw) if raw else {}
        for name, value in served.items():
            if name not in features:
                continue
            compared += 1
            exported = features[name][i]
            same = (float(value) == float(exported)) if isinstance(value, (int, float)) and not isinstance(
                exported, str) else str(value) == str(exported)
            if not same:
                differs[name] = differs.get(name, 0) + 1
    return {"values_compared": compared, "mismatches": differs}


def split_by_time(times: np.ndarray, fractions: tuple[float, float, float]) -> tuple[list[str], list[int]]:
    """Split name per row: the earliest rows train, then validation, then test (cut at time quantiles,
    so rows with equal times never straddle a cut). Returns (names, cut times)."""
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ReplayError(f"split fractions {fractions} must be non-negative and sum to 1")
    ordered = np.sort(times)
    n = len(ordered)
    cuts = [int(ordered[min(n - 1, int(round(n * sum(fractions[:k]))))]) if n else 0 for k in (1, 2)]
    if fractions[1] == 0:
        cuts[1] = cuts[0]
    names = np.where(times < cuts[0], 0, np.where(times < cuts[1], 1, 2))
    if fractions[2] == 0:
        names = np.minimum(names, 1)
    return [SPLITS[i] for i in names.tolist()], cuts


def export_training(settings: FeatureFlowSettings, req: ExportRequest,
                    on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the training set and its manifest under `req.out`; returns the manifest."""
    started = time.perf_counter()
    if on_phase:
        on_phase("read labels")
    labelled, info = labelled_events(settings, req)
    features, feature_ts, files = point_in_time(settings, labelled, on_phase)
    times = as_int(labelled.column("event_ts"))
    columns: dict[str, Any] = {name: labelled.column(name) for name in labelled.column_names if name != "_served"}
    columns["event_ts"] = pa.array(times, pa.timestamp("ms", tz="UTC"))
    for entity, ts in feature_ts.items():
        columns[f"{entity}.feature_ts"] = pa.array(ts, pa.timestamp("ms", tz="UTC"))
    for f in FEATURES:
        columns[f.qualified] = pa.array(features[f.qualified], ARROW_TYPES[f.dtype])
    columns.update(request_columns(labelled))
    table = pa.table(columns)
    if req.split == "time":
        names, cuts = split_by_time(times, req.fractions)
    elif req.split == "none":
        names, cuts = ["train"] * table.num_rows, []
    else:
        raise ReplayError(f"unknown --split {req.split!r}: use time or none")
    table = table.append_column("split", pa.array(names, pa.string()))
    req.out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    for name in SPLITS:
        part = table.filter(pc.equal(table.column("split"), name))
        if part.num_rows == 0 and name != "train":
            continue
        write_atomic(part.drop_columns(["split"]), req.out / f"{name}.parquet")
        part_times = as_int(part.column("event_ts"))
        splits[name] = {"rows": part.num_rows, "file": f"{name}.parquet",
                        "positives": int(pc.sum(part.column("label")).as_py() or 0),
                        "event_ts_min": iso(int(part_times.min())) if part.num_rows else None,
                        "event_ts_max": iso(int(part_times.max())) if part.num_rows else None}
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": table.num_rows,
        "splits": splits,
        "split": {"method": req.split, "fractions": list(req.fractions), "cuts": [iso(c) for c in cuts]},
        "time_range": {"event_ts_min": iso(int(times.min())), "event_ts_max": iso(int(times.max()))},
        "features": [{"name": f.qualified, "dtype": f.dtype, "default": f.default, "entity": f.entity.name,
                      "aggregation": f.aggregation.value} for f in FEATURES]
        + [{"name": r.qualified, "dtype": r.dtype, "default": r.default, "entity": "request",
            "aggregation": "as served"} for r in REQUEST_FEATURES],
        "feature_set_hash": hashlib.sha256(json.dumps([repr(f) for f in FEATURES]).encode()).hexdigest()[:16],
        "point_in_time": "each feature from events with event time <= the row's event_ts (ASOF, never later)",
        "sources": {**info, "event_log": files},
        "training_serving_skew": skew(labelled, features),
        "seconds": round(time.perf_counter() - started, 3),
    }
    tmp = req.out / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, req.out / "manifest.json")
    return manifest

