"""The offline feature log: closed tumbling windows of feature values, one Parquet file per window and shard.

Layout: `features/entity=E/date=YYYY-MM-DD/hour=HH/w{window_end}-{shard}.parquet`, one row per entity
updated in the window with its last values (and the event time they reflect). The name is fixed by
(window, shard), so a re-sent window after a restart overwrites its file instead of adding rows.
Point-in-time training sets ASOF-join on `feature_ts`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from streams.features.definitions import ENTITIES, features_of
from streams.features.shard import FeatureLogWindow
from streams.flows import metrics
from streams.sinks.parquet import hour_partition, write_atomic

ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}  # feature dtype -> Arrow


def feature_log_schema(entity: str) -> pa.Schema:
    """entity_id, feature_ts, window_start, window_end, then one typed column per feature of the entity."""
    defs = next(features_of(e) for e in ENTITIES if e.name == entity)
    return pa.schema(
        [pa.field("entity_id", pa.string()), pa.field("feature_ts", pa.timestamp("ms", tz="UTC")),
         pa.field("window_start", pa.timestamp("ms", tz="UTC")), pa.field("window_end", pa.timestamp("ms", tz="UTC"))]
        + [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in defs]
    )


_SCHEMAS = {e.name: feature_log_schema(e.name) for e in ENTITIES}


def window_path(root: Path, window: FeatureLogWindow, shard: str) -> Path:
    return (root / f"entity={window.entity}" / hour_partition(window.window_start)
            / f"w{window.window_end}-{shard.replace(':', '_')}.parquet")


def write_window(root: Path, shard: str, window: FeatureLogWindow) -> Path:
    schema = _SCHEMAS[window.entity]
    rows = [{"entity_id": eid, "feature_ts": ts, "window_start": window.window_start, "window_end": window.window_end,
             **values} for eid, ts, values in window.rows]
    path = window_path(root, window, shard)
    if path.exists():  # a window re-sent after a restart, or reopened by a late event: merge, newest wins
        merged = {r["entity_id"]: r for r in pq.read_table(path).to_pylist()}
        for row in rows:
            old = merged.get(row["entity_id"])
            if old is None or old["feature_ts"].timestamp() * 1000 <= row["feature_ts"]:
                merged[row["entity_id"]] = row
        rows = [r if isinstance(r["feature_ts"], int) else _as_millis(r) for r in merged.values()]
    write_atomic(pa.Table.from_pylist(rows, schema=schema), path)
    metrics.PARQUET_ROWS.labels("features").inc(len(rows))
    return path


def _as_millis(row: dict) -> dict:
    """A row read back from Parquet (datetimes) in the shape we write (epoch ms)."""
    out = dict(row)
    for name in ("feature_ts", "window_start", "window_end"):
        out[name] = int(out[name].timestamp() * 1000)
    return out


class _Partition(StatelessSinkPartition[tuple[str, FeatureLogWindow]]):
    def __init__(self, root: Path):
        self._root = root

    def write_batch(self, items: list[tuple[str, FeatureLogWindow]]) -> None:
        for shard, window in items:
            write_window(self._root, shard, window)


class FeatureLogSink(DynamicSink[tuple[str, FeatureLogWindow]]):
    def __init__(self, root: Path):
        self._root = root

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self._root)
