"""Tile math equals brute force over the same events (hypothesis), in any arrival order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.windows.tiles import DistinctWindow, TileWindow, brute_force_window, window_bounds

TILE_MS, TILES = 1000, 10
events = st.lists(st.tuples(st.integers(0, 60_000), st.floats(-1e3, 1e3, allow_nan=False)), max_size=200)


@given(events, st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_tile_window_equals_brute_force_for_any_order(evs, rnd):
    rnd.shuffle(evs)
    window, rows = TileWindow(TILE_MS, TILES, 2), {}
    t = 0
    accepted = []
    for ts, value in evs:
        t = max(t, ts)
        row = window.row_for(rows, ts, t)
        if row is not None:
            row[0] += 1
            row[1] += value
        accepted.append((ts, value))
    count, total = brute_force_window(accepted, t, TILE_MS, TILES)
    got = window.totals(rows, t)
    assert got[0] == count
    assert abs(got[1] - total) <= 1e-6 * max(1.0, sum(abs(v) for _, v in accepted))


@given(st.lists(st.tuples(st.integers(0, 60_000), st.sampled_from("abcdefgh")), max_size=200))
def test_distinct_window_is_exact(evs):
    window, seen = DistinctWindow(TILE_MS, TILES), {}
    t = 0
    for ts, value in evs:
        t = max(t, ts)
        window.add(seen, value, ts, t)
    start, end = window_bounds(t, TILE_MS, TILES)
    assert window.count(seen, t) == len({v for ts, v in evs if start <= ts < end})


@given(st.integers(-10**12, 10**12), st.integers(1, 10**6), st.integers(1, 100))
def test_window_bounds_cover_exactly_n_tiles_ending_with_t(t, tile_ms, tiles):
    start, end = window_bounds(t, tile_ms, tiles)
    assert end - start == tile_ms * tiles
    assert start <= t < end and end - t <= tile_ms


def test_pruned_tiles_do_not_come_back():
    window, rows = TileWindow(TILE_MS, TILES, 1), {}
    window.row_for(rows, 0, 0)[0] += 1
    assert window.totals(rows, TILE_MS * TILES) == [0.0]
    assert rows == {}
    assert window.row_for(rows, 0, TILE_MS * TILES) is None
