"""Feature values computed column-wise (numpy) from a whole table of events at once.

Same definitions and the same tile math as the live flow's `EntityState`, vectorised: rows are
grouped (by entity, or by point-in-time query), and every group's values are those an
`EntityState` would hold after applying the group's rows in the given (processing) order. Floating
sums are accumulated in the order the live tiles are (events in order within a tile, tiles in the
order they were created), so the values are bit-identical, not merely close. Pure: no I/O.

One documented difference: the live state forgets a session 24 h after its last event; a session
id that goes quiet for a day and then comes back restarts its count live but not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streams.features.definitions import DAY_MS
from streams.features.state import NOT_NULL, EntityPlan


@dataclass
class ClickRows:
    """Windowed-source rows in processing order: group index, event time and the feature columns."""

    group: np.ndarray  # int64 per row
    ts: np.ndarray  # int64 epoch ms per row
    table: pa.Table  # the same rows; columns named by the feature definitions

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class ChangeRows:
    """CDC rows in processing order: group, change time, op and the changed row's attribute columns."""

    group: np.ndarray
    ts: np.ndarray
    deleted: np.ndarray  # bool: op 'd' or no `after` image
    attrs: dict[str, pa.Array]  # attribute field -> values from `after`


@dataclass
class GroupValues:
    """Feature values of `n` groups, column-wise; `present` marks groups that had any row."""

    n: int
    ts: np.ndarray
    present: np.ndarray
    columns: dict[str, list[Any]]  # feature name -> per-group value (None = absent attribute)

    def row(self, i: int) -> dict[str, Any]:
        """One group's values as the live state would return them (absent attributes left out)."""
        return {name: col[i] for name, col in self.columns.items() if col[i] is not None}

    def rows(self, ids: list[str]) -> list[tuple[str, int, dict[str, Any]]]:
        """(id, event time reflected, values) for every present group, the shape the Redis writer takes."""
        ts = self.ts.tolist()
        names = list(self.columns.items())
        out = []
        for i in np.flatnonzero(self.present).tolist():
            out.append((ids[i], ts[i], {name: col[i] for name, col in names if col[i] is not None}))
        return out


def _mask(table: pa.Table, where: tuple[tuple[str, Any], ...]) -> np.ndarray:
    """Rows matching every (field, expected) pair; NOT_NULL means present."""
    out = np.ones(table.num_rows, dtype=bool)
    for name, expected in where:
        column = table.column(name)
        if expected is NOT_NULL:
            hit = pc.is_valid(column)
        else:
            hit = pc.fill_null(pc.equal(column, pa.scalar(expected, column.type)), False)
        out &= hit.to_numpy(zero_copy_only=False)
    return out


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(table.column(name).cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """Dictionary codes of a column (-1 for null) and the dictionary size."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks() if encoded.num_chunks else pa.array([], encoded.type)
    codes = pc.fill_null(encoded.indices.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)
    return codes, len(encoded.dictionary)


def _last_per_group(group: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """For each group, the position (in `rows`) of its last row; -1 where it has none."""
    out = np.full(n, -1, dtype=np.int64)
    if rows.size:
        rev = rows[::-1]
        uniq, first = np.unique(group[rev], return_index=True)
        out[uniq] = rev[first]
    return out


def _tile_totals(plan: EntityPlan, slot: int, clicks: ClickRows, t: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """Per column of window `slot`: each group's window total, summed in the live tiles' order."""
    window = plan.windows[slot]
    columns = [c for c in plan.columns if c.slot == slot]
    out = {c.col: np.zeros(n) for c in columns}
    if not len(clicks):
        return out
    group, tile = clicks.group, clicks.ts // window.tile_ms
    in_window = tile > t[group] // window.tile_ms - window.tiles
    matches = [_mask(clicks.table, c.where) for c in columns]
    created = in_window & np.logical_or.reduce(matches)  # a tile row exists once any column matched
    idx = np.flatnonzero(created)
    if not idx.size:
        return out
    tiles = tile[idx]
    low = tiles.min()
    span = int(tiles.max() - low) + 1
    key = group[idx] * span + (tiles - low)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # tiles in the order the live dict created them
    owners = (uniq // span)[order]
    for c, hit in zip(columns, matches):
        weights = np.where(hit[idx], 1.0 if c.value_field is None else _floats(clicks.table, c.value_field)[idx], 0.0)
        per_tile = np.bincount(inverse, weights=weights, minlength=len(uniq))  # adds in row order
        out[c.col] = np.bincount(owners, weights=per_tile[order], minlength=n)
    return out


def _distinct(plan: EntityPlan, k: int, clicks: ClickRows, t: np.ndarray, n: int) -> np.ndarray:
    f, window = plan.distinct[k]
    if not len(clicks):
        return np.zeros(n, dtype=np.int64)
    values, size = _codes(clicks.table.column(f.value_field))
    keep = (values >= 0) & (clicks.ts // window.tile_ms > t[clicks.group] // window.tile_ms - window.tiles)
    pairs = np.unique(clicks.group[keep] * max(size, 1) + values[keep])
    return np.bincount(pairs // max(size, 1), minlength=n)


def _sessions(plan: EntityPlan, clicks: ClickRows, t: np.ndarray, n: int) -> np.ndarray:
    """Events of the session of each group's latest event (the last one processed among ties)."""
    out = np.zeros(n, dtype=np.int64)
    if not len(clicks):
        return out
    codes, _ = _codes(clicks.table.column(plan.session_field))
    latest = _last_per_group(clicks.group, np.flatnonzero(clicks.ts == t[clicks.group]), n)
    current = np.where(latest >= 0, codes[np.maximum(latest, 0)], -1)
    same = (codes >= 0) & (codes == current[clicks.group])
    return np.bincount(clicks.group[same], minlength=n)


def evaluate(plan: EntityPlan, n: int, clicks: ClickRows | None, changes: ChangeRows | None) -> GroupValues:
    """The values `n` groups' `EntityState`s would hold after their rows (see module doc)."""
    t = np.zeros(n, dtype=np.int64)
    present = np.zeros(n, dtype=bool)
    if clicks is not None and len(clicks):
        np.maximum.at(t, clicks.group, clicks.ts)
        present[clicks.group] = True
    cdc_ts = np.zeros(n, dtype=np.int64)
    attrs: dict[str, list[Any]] = {}
    if changes is not None and len(changes.ts):
        np.maximum.at(cdc_ts, changes.group, changes.ts)
        present[changes.group] = True
        last = _last_per_group(changes.group, np.arange(len(changes.ts)), n)
        live = (last >= 0) & ~changes.deleted[np.maximum(last, 0)]
        take = pa.array(np.where(live, last, 0))
        valid = live.tolist()
        for name, column in changes.attrs.items():
            values = column.take(take).to_pylist()
            attrs[name] = [v if ok else None for v, ok in zip(values, valid)]
    ts = np.maximum(t, cdc_ts)
    rows = clicks if clicks is not None else ClickRows(np.zeros(0, np.int64), np.zeros(0, np.int64), pa.table({}))
    totals = {slot: _tile_totals(plan, slot, rows, t, n) for slot in range(len(plan.windows))}
    columns: dict[str, list[Any]] = {}
    none = [None] * n
    for f, how in plan.outputs:
        kind = how[0]
        if kind == "col":
            total = totals[how[1]][how[2]]
            columns[f.name] = total.astype(np.int64).tolist() if f.dtype == "int" else total.tolist()
        elif kind == "mean":
            sums, counts = totals[how[1]][how[2]], totals[how[1]][how[3]]
            mean = np.divide(sums, counts, out=np.zeros(n), where=counts != 0)
            columns[f.name] = [m if c else f.default for m, c in zip(mean.tolist(), counts.tolist())]
        elif kind == "distinct":
            columns[f.name] = _distinct(plan, how[1], rows, t, n).tolist()
        elif kind == "session_count":
            columns[f.name] = _sessions(plan, rows, t, n).tolist()
        elif kind == "max":
            columns[f.name] = t.tolist()
        elif kind == "attribute":
            columns[f.name] = attrs.get(f.value_field, none)
        elif kind == "age_days":
            signup = attrs.get(f.value_field, none)
            columns[f.name] = [None if s is None else (u - s) // DAY_MS for s, u in zip(signup, ts.tolist())]
    for f, how in plan.outputs:
        if how[0] == "ratio":
            num, den = (columns.get(name, [0] * n) for name in f.inputs)
            columns[f.name] = [a / b if b else 0.0 for a, b in zip(num, den)]
    return GroupValues(n, ts, present, columns)
