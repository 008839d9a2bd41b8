"""Arrow tables of events -> the grouped rows the vectorised engine evaluates.

Group by entity (a rebuild: one value set per entity) or by point-in-time query (an export: one
value set per (entity, time) asked for, from the entity's rows up to that time). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.topics import CDC_TOPIC_NAMES
from streams.features.definitions import Agg, Entity
from streams.features.state import EntityPlan
from streams.replay.engine import ChangeRows, ClickRows, GroupValues, evaluate


def as_int(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Epoch-ms numpy int64 from an int or timestamp column (nulls become 0)."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def plain(table: pa.Table) -> pa.Table:
    """Timestamps as epoch-ms ints, the in-process convention (`strip_logical_types`)."""
    cols = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    return pa.table(cols, names=table.column_names)


@dataclass
class EntityRows:
    """One entity's rows from every source topic, with ids resolved to shared codes."""

    entity: Entity
    ids: list[str]
    click_codes: np.ndarray
    clicks: pa.Table | None  # windowed-source rows (processing order)
    change_codes: np.ndarray
    changes: pa.Table | None  # CDC rows (processing order), columns: op, ts_ms, after


def entity_rows(plan: EntityPlan, tables: dict[str, pa.Table]) -> EntityRows:
    """Select `plan.entity`'s rows from `tables` (topic -> rows in processing order) and code its ids."""
    entity = plan.entity
    clicks = changes = None
    id_parts: list[pa.Array] = []
    for topic, table in tables.items():
        field = entity.id_field(topic)
        if field is None or table.num_rows == 0:
            continue
        if topic in CDC_TOPIC_NAMES:
            if not plan.attribute_fields.get(topic):
                continue
            after, before = table.column("after"), table.column("before")
            ids = pc.coalesce(pc.struct_field(after, field), pc.struct_field(before, field))
            table = table.append_column("_id", ids).filter(pc.is_valid(ids))
            changes = table
        elif topic in plan.windowed_sources:
            table = table.filter(pc.is_valid(table.column(field)))
            table = table.append_column("_id", table.column(field))
            clicks = table
    for t in (clicks, changes):
        if t is not None:
            id_parts.append(t.column("_id").cast(pa.string()).combine_chunks())
    if not id_parts:
        return EntityRows(entity, [], np.zeros(0, np.int64), None, np.zeros(0, np.int64), None)
    encoded = pc.dictionary_encode(pa.concat_arrays(id_parts))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_clicks = clicks.num_rows if clicks is not None else 0
    return EntityRows(entity, encoded.dictionary.to_pylist(), codes[:n_clicks], clicks, codes[n_clicks:], changes)


def _time_field(plan: EntityPlan) -> str:
    """Event-time field of the plan's windowed source."""
    return next(f.source.time_field for f in plan.features if f.source.name in plan.windowed_sources)


def _click_rows(plan: EntityPlan, table: pa.Table | None, groups: np.ndarray, rows: np.ndarray | None = None) -> ClickRows | None:
    if table is None:
        return None
    if rows is not None:
        table = table.take(pa.array(rows))
    return ClickRows(groups, as_int(table.column(_time_field(plan))), plain(table))


def _change_rows(plan: EntityPlan, table: pa.Table | None, groups: np.ndarray,
                 rows: np.ndarray | None = None) -> ChangeRows | None:
    if table is None:
        return None
    if rows is not None:
        table = table.take(pa.array(rows))
    after = table.column("after")
    deleted = pc.or_(pc.equal(table.column("op"), "d"), pc.is_null(after)).to_numpy(zero_copy_only=False)
    fields = {f.value_field for f in plan.features if f.aggregation in (Agg.ATTRIBUTE, Agg.AGE_DAYS)}
    attrs = {}
    for name in fields:
        column = pc.struct_field(after, name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        attrs[name] = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return ChangeRows(groups, as_int(table.column("ts_ms")), np.asarray(deleted, dtype=bool), attrs)


def latest_values(plan: EntityPlan, rows: EntityRows) -> tuple[list[str], GroupValues]:
    """Every entity's values after all its rows: what the live flow leaves in Redis."""
    n = len(rows.ids)
    values = evaluate(plan, n, _click_rows(plan, rows.clicks, rows.click_codes),
                      _change_rows(plan, rows.changes, rows.change_codes))
    return rows.ids, values


def _expand(codes: np.ndarray, ts: np.ndarray, query_codes: np.ndarray, query_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index, query index) pairs: for each query, its entity's rows with time <= the query time,
    in processing order."""
    if not codes.size or not query_codes.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(codes, kind="stable")  # by entity, processing order kept inside
    sorted_codes = codes[order]
    start = np.searchsorted(sorted_codes, query_codes, side="left")
    stop = np.searchsorted(sorted_codes, query_codes, side="right")
    lengths = stop - start
    total = int(lengths.sum())
    query = np.repeat(np.arange(len(query_codes)), lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = order[np.repeat(start, lengths) + offsets]
    keep = ts[rows] <= query_ts[query]
    return rows[keep], query[keep]


def values_as_of(plan: EntityPlan, rows: EntityRows, entity_ids: list[str], times: np.ndarray) -> GroupValues:
    """Values per query (entity id, time): from the entity's rows with event time <= that time only,
    so a value can never reflect anything later than the query (point-in-time correct)."""
    lookup = {eid: i for i, eid in enumerate(rows.ids)}
    query_codes = np.array([lookup.get(e, -1) for e in entity_ids], dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    n = len(entity_ids)
    clicks = changes = None
    if rows.clicks is not None:
        ts = as_int(rows.clicks.column(_time_field(plan)))
        r, q = _expand(rows.click_codes, ts, query_codes, times)
        clicks = _click_rows(plan, rows.clicks, q, r)
    if rows.changes is not None:
        r, q = _expand(rows.change_codes, as_int(rows.changes.column("ts_ms")), query_codes, times)
        changes = _change_rows(plan, rows.changes, q, r)
    return evaluate(plan, n, clicks, changes)

