"""The feature log's columnar writer gives the table one dict per row through `Table.from_pylist` gave."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.features.definitions import ENTITIES, features_of
from streams.features.shard import FeatureLogWindow
from streams.sinks.feature_log import feature_log_schema, window_table, write_window
from tests.oracle import same

PERIOD = 300_000
T0 = 1_763_800_200_000  # a window start (multiple of PERIOD)
DTYPES = {e.name: {f.name: f.dtype for f in features_of(e)} for e in ENTITIES}
Row = tuple[str, int, dict[str, Any]]

VALUES = {
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats() | st.sampled_from([-0.0, float("nan"), float("inf"), -float("inf")]),
    "str": st.text(max_size=12),
}
# What a feature might wrongly hold: bools and floats in int columns, numbers in str ones, too-large ints...
ODD = st.one_of(st.booleans(), st.floats(), st.integers(-(2**64), 2**64), st.text(max_size=4), st.none(),
                st.binary(max_size=4), st.just(1.0), st.just(2.5))


def reference_table(window: FeatureLogWindow) -> pa.Table:
    """The oracle: how the feature log built a window's table before it went columnar."""
    rows = [{"entity_id": eid, "feature_ts": ts, "window_start": window.window_start,
             "window_end": window.window_end, **values} for eid, ts, values in window.rows]
    return pa.Table.from_pylist(rows, schema=feature_log_schema(window.entity))


def reference_merge(old: list[Row], new: list[Row]) -> list[Row]:
    """The oracle of a window written twice: per entity the newest feature_ts wins (a tie goes to `new`)."""
    merged = {row[0]: row for row in old}
    for row in new:
        if row[0] not in merged or merged[row[0]][1] <= row[1]:
            merged[row[0]] = row
    return list(merged.values())


def assert_same_table(got: pa.Table, want: pa.Table) -> None:
    """Same schema and the same values, NaN equal to NaN and -0.0 unlike 0.0."""
    assert got.schema.equals(want.schema)
    assert same(got.to_pydict(), want.to_pydict())


def outcome(build, window: FeatureLogWindow) -> pa.Table | Exception:
    try:
        return build(window)
    except Exception as exc:  # noqa: BLE001 - the error itself is what is compared
        return exc


@st.composite
def rows(draw: st.DrawFn, entity: str, values: dict[str, st.SearchStrategy] | None = None,
         ids: st.SearchStrategy[str] | None = None, spread_ms: int = PERIOD) -> list[Row]:
    """Rows of a window, unique entity ids, each with some of the entity's features (the rest absent)."""
    values = values or {name: VALUES[dtype] for name, dtype in DTYPES[entity].items()}
    row = st.tuples(st.text(max_size=6) if ids is None else ids, st.integers(T0, T0 + spread_ms - 1),
                    st.fixed_dictionaries({}, optional=values))
    return draw(st.lists(row, max_size=25, unique_by=lambda r: r[0]))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), entity=st.sampled_from([e.name for e in ENTITIES]))
def test_a_written_window_holds_what_from_pylist_gives(data: st.DataObject, entity: str) -> None:
    window = FeatureLogWindow(entity, T0, T0 + PERIOD, data.draw(rows(entity)))
    want = reference_table(window)
    got = window_table(window)
    assert got.schema.equals(want.schema, check_metadata=True)
    assert_same_table(got, want)
    with tempfile.TemporaryDirectory() as tmp:
        assert_same_table(pq.read_table(write_window(Path(tmp), f"{entity}:0", window)), want)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), entity=st.sampled_from([e.name for e in ENTITIES]))
def test_wrong_value_types_give_what_from_pylist_gives(data: st.DataObject, entity: str) -> None:
    """Same table or same error (type and message: that of the first bad column) for odd values anywhere."""
    odd = {name: ODD | VALUES[dtype] for name, dtype in DTYPES[entity].items()}
    window = FeatureLogWindow(entity, T0, T0 + PERIOD, data.draw(rows(entity, odd)))
    got, want = outcome(window_table, window), outcome(reference_table, window)
    if isinstance(want, Exception):
        assert type(got) is type(want) and str(got) == str(want)
    else:
        assert_same_table(got, want)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), entity=st.sampled_from([e.name for e in ENTITIES]))
def test_a_window_written_twice_keeps_the_newest_row_of_each_entity(data: st.DataObject, entity: str) -> None:
    ids = st.sampled_from([f"e{i}" for i in range(12)])  # few ids and times: shared entities, ties
    first = data.draw(rows(entity, ids=ids, spread_ms=4))
    second = data.draw(rows(entity, ids=ids, spread_ms=4))
    window = FeatureLogWindow(entity, T0, T0 + PERIOD, first)
    want = reference_table(FeatureLogWindow(entity, T0, T0 + PERIOD, reference_merge(first, second)))
    with tempfile.TemporaryDirectory() as tmp:
        write_window(Path(tmp), "s", window)
        path = write_window(Path(tmp), "s", FeatureLogWindow(entity, T0, T0 + PERIOD, second))
        assert_same_table(pq.read_table(path), want)
        assert len(list(Path(tmp).rglob("*.parquet"))) == 1


def test_newer_rows_replace_in_place_older_ones_are_ignored_and_new_entities_follow(tmp_path: Path) -> None:
    first = [("u1", T0 + 10, {"views_1h": 1, "tier": "free"}), ("u2", T0 + 20, {"views_1h": 2}),
             ("u3", T0 + 30, {"views_1h": 3}), ("u4", T0 + 40, {"views_1h": 4})]
    second = [("u5", T0 + 5, {"views_1h": 50}), ("u3", T0 + 31, {"views_1h": 30}),  # newer: its tier is now absent
              ("u2", T0 + 19, {"views_1h": 20}), ("u1", T0 + 10, {"views_1h": 10})]  # older; a tie
    write_window(tmp_path, "user:0", FeatureLogWindow("user", T0, T0 + PERIOD, first))
    path = write_window(tmp_path, "user:0", FeatureLogWindow("user", T0, T0 + PERIOD, second))
    got = pq.read_table(path).select(["entity_id", "views_1h", "tier"]).to_pylist()
    assert got == [{"entity_id": "u1", "views_1h": 10, "tier": None}, {"entity_id": "u2", "views_1h": 2, "tier": None},
                   {"entity_id": "u3", "views_1h": 30, "tier": None}, {"entity_id": "u4", "views_1h": 4, "tier": None},
                   {"entity_id": "u5", "views_1h": 50, "tier": None}]
    assert pq.read_table(path).column("feature_ts").cast(pa.int64()).to_pylist() == [
        T0 + 10, T0 + 20, T0 + 31, T0 + 40, T0 + 5]


def test_a_file_of_an_older_schema_merges_as_its_rows_would(tmp_path: Path) -> None:
    """Columns the file lacks are null for its rows; a column of another type is converted."""
    window = FeatureLogWindow("item", T0, T0 + PERIOD, [("i1", T0 + 1, {"views_1h": 3, "price": 2.5})])
    path = write_window(tmp_path, "item:0", window)
    schema = feature_log_schema("item")
    older = pa.schema([f.with_type(pa.int32()) if f.name == "views_1h" else f for f in schema if f.name != "price"])
    pq.write_table(pq.read_table(path).select(older.names).cast(older), path)
    later = FeatureLogWindow("item", T0, T0 + PERIOD, [("i2", T0 + 2, {"price": 1.0})])
    merged = pq.read_table(write_window(tmp_path, "item:0", later))
    assert merged.schema.equals(schema)
    assert merged.select(["entity_id", "views_1h", "price"]).to_pylist() == [
        {"entity_id": "i1", "views_1h": 3, "price": None}, {"entity_id": "i2", "views_1h": None, "price": 1.0}]


@pytest.mark.parametrize("entity", [e.name for e in ENTITIES])
def test_an_empty_window_is_an_empty_table_of_the_schema(entity: str) -> None:
    window = FeatureLogWindow(entity, T0, T0 + PERIOD, [])
    assert window_table(window).equals(reference_table(window))
