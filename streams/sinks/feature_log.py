"""The offline feature log: closed tumbling windows of feature values, one Parquet file per window and shard.

Layout: `features/entity=E/date=YYYY-MM-DD/hour=HH/w{window_end}-{shard}.parquet`, one row per entity
updated in the window with its last values (and the event time they reflect). The name is fixed by
(window, shard), so a re-sent window after a restart overwrites its file instead of adding rows.
Point-in-time training sets ASOF-join on `feature_ts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from streams.features.definitions import ENTITIES, features_of
from streams.features.shard import FeatureLogWindow
from streams.flows import metrics
from streams.sinks.background import BackgroundWriter, ShardedSink
from streams.sinks.parquet import hour_partition, write_atomic

ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}  # feature dtype -> Arrow
TIMESTAMP = pa.timestamp("ms", tz="UTC")
_META = [pa.field("entity_id", pa.string()), pa.field("feature_ts", TIMESTAMP),  # the columns before the features
         pa.field("window_start", TIMESTAMP), pa.field("window_end", TIMESTAMP)]


def feature_log_schema(entity: str) -> pa.Schema:
    """entity_id, feature_ts, window_start, window_end, then one typed column per feature of the entity."""
    defs = next(features_of(e) for e in ENTITIES if e.name == entity)
    return pa.schema(_META + [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in defs])


_SCHEMAS = {e.name: feature_log_schema(e.name) for e in ENTITIES}
# An entity's feature columns as one struct type, so that Arrow converts the row dicts in a single pass.
_FEATURES = {name: pa.struct(list(schema)[len(_META):]) for name, schema in _SCHEMAS.items()}


def window_path(root: Path, window: FeatureLogWindow, shard: str) -> Path:
    return (root / f"entity={window.entity}" / hour_partition(window.window_start)
            / f"w{window.window_end}-{shard.replace(':', '_')}.parquet")


def write_window(root: Path, shard: str, window: FeatureLogWindow) -> Path:
    """Write a closed window to its file; if the file exists (re-sent or reopened window), merge into it."""
    table = window_table(window)
    path = window_path(root, window, shard)
    if path.exists():
        table = merge(conform(pq.read_table(path), table.schema), table)
        metrics.LOG_WINDOW_MERGES.labels(window.entity).inc()
    write_atomic(table, path)
    metrics.PARQUET_ROWS.labels("features").inc(table.num_rows)
    return path


def window_table(window: FeatureLogWindow) -> pa.Table:
    """The window's rows as a table built column by column: the same table (values, nulls, errors) as
    `Table.from_pylist` of one `{"entity_id", "feature_ts", "window_start", "window_end", **values}` dict
    per row, without building those dicts."""
    schema = _SCHEMAS[window.entity]
    if not window.rows:
        return schema.empty_table()
    eids, feature_ts, values = zip(*window.rows)
    n = len(eids)
    meta = [pa.array(eids, type=pa.string()), pa.array(feature_ts, type=TIMESTAMP),
            pa.repeat(pa.scalar(window.window_start, type=TIMESTAMP), n),
            pa.repeat(pa.scalar(window.window_end, type=TIMESTAMP), n)]
    return pa.Table.from_arrays(meta + feature_columns(values, _FEATURES[window.entity]), schema=schema)


def feature_columns(values: Sequence[Mapping[str, Any]], features: pa.StructType) -> list[pa.Array]:
    """One typed array per feature, null where a row lacks the feature.

    Arrow converts the dicts row by row in one pass: they are long out of the CPU cache when their window
    closes, and a Python pass per feature fetches each from memory once per feature (slower than `from_pylist`).
    """
    try:
        return pa.array(values, type=features).flatten()
    except Exception:
        # Raise what a conversion column by column raises (that of the first bad column, in schema order).
        for field in features:
            pa.array([row.get(field.name) for row in values], type=field.type)
        raise


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table read back from a window's file in `schema`: columns it lacks are null, columns of another
    type are converted through Python values (as a round trip through rows would)."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
        elif table.schema.field(field.name).type == field.type:
            columns.append(table.column(field.name))
        else:
            columns.append(pa.array(table.column(field.name).to_pylist(), type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def merge(old: pa.Table, new: pa.Table) -> pa.Table:
    """`new` rows merged into `old` ones (same schema): per entity the row with the newest feature_ts wins,
    a tie going to `new`; a replaced row keeps its place, entities only in `new` follow in their order."""
    both = pa.concat_tables([old, new])
    ids = both.column("entity_id").to_pylist()
    feature_ts = both.column("feature_ts").cast(pa.int64()).to_pylist()
    n_old = old.num_rows
    last = dict(zip(ids[:n_old], range(n_old)))  # id -> its last row in `old`, ids in order of first row
    picked = list(last.values())  # row of `both` for each output row
    slot = dict(zip(last, range(len(picked))))  # entity id -> output row
    for i in range(n_old, len(ids)):
        at = slot.get(ids[i])
        if at is None:
            slot[ids[i]] = len(picked)
            picked.append(i)
        elif feature_ts[picked[at]] <= feature_ts[i]:
            picked[at] = i
    return both.take(pa.array(picked, type=pa.int64()))


def _write_windows(root: Path, items: list[tuple[str, FeatureLogWindow]]) -> None:
    for shard, window in items:
        write_window(root, shard, window)


class FeatureLogSink(ShardedSink[FeatureLogWindow]):
    """Closed windows to their files on a thread of their own: Parquet encodes and compresses outside the GIL,
    so a closing window no longer stops the flow (writing and merging windows was 32% of its benchmark's profile)."""

    def __init__(self, root: Path, shard_keys: list[str]):
        super().__init__(shard_keys, ("feature-log", root), partial(BackgroundWriter, partial(_write_windows, root),
                                                                    "feature-log-writer"))
