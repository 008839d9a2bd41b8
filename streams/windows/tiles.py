"""Sliding event-time windows kept as tiles: O(1) update per event, value fresh on every event.

A window of length L with N tiles keeps one accumulator row per tile of L/N ms. Evaluated at time t
it sums the tiles (tile(t) - N, tile(t)]; older tiles are pruned. Out-of-order events update
the tile they belong to. Pure: plain ints and floats, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable


def tile_of(ts_ms: int, tile_ms: int) -> int:
    """Index of the tile holding event time `ts_ms` (floor division, so negative times work too)."""
    return ts_ms // tile_ms


def window_bounds(t_ms: int, tile_ms: int, tiles: int) -> tuple[int, int]:
    """[start, end) in ms of the tiles covered when evaluating at `t_ms`."""
    cur = tile_of(t_ms, tile_ms)
    return (cur - tiles + 1) * tile_ms, (cur + 1) * tile_ms


class TileWindow:
    """Geometry of one sliding window; the per-entity tile rows (`{tile index: [floats]}`) are passed in.

    Keeping the rows as plain dicts (not objects) makes entity state cheap to snapshot.
    """

    __slots__ = ("tile_ms", "tiles", "width", "totals")

    def __init__(self, tile_ms: int, tiles: int, width: int):
        self.tile_ms, self.tiles, self.width = tile_ms, tiles, width
        sums = [f"s{c}" for c in range(width)]
        source = "\n".join(["def totals(rows, t):", *("    " + line for line in self.totals_code("rows", "t", sums)),
                            f"    return [{', '.join(sums)}]"])
        env: dict = {}
        exec(compile(source, f"<totals {tile_ms}x{tiles}>", "exec"), env)  # noqa: S102 - ints and fixed names only
        # totals(rows, t_ms) -> column sums over the window at t_ms; prunes tiles that have left it for good
        self.totals = env["totals"]

    def totals_code(self, rows: str, t: str, sums: list[str]) -> list[str]:
        """Python lines setting each name of `sums` to its column's sum over the tile rows `rows` at time `t`,
        and pruning the tiles that have left the window for good. `totals` runs them, and the compiled
        feature evaluation inlines them (no call, no list per window): one text, the same sums in the same order."""
        lines = [f"{' = '.join(sums)} = 0.0"] if sums else []
        lines += [f"lo = {t} // {self.tile_ms} - {self.tiles}", "stale = None", f"for idx, row in {rows}.items():",
                  "    if idx <= lo:", "        if stale is None: stale = [idx]", "        else: stale.append(idx)",
                  "        continue"]
        lines += [f"    {name} += row[{c}]" for c, name in enumerate(sums)]
        return lines + ["if stale is not None:", f"    for idx in stale: del {rows}[idx]"]

    def row_for(self, rows: dict[int, list[float]], ts_ms: int, t_ms: int) -> list[float] | None:
        """The accumulator row of `ts_ms`'s tile, or None if that tile is already out of the window at `t_ms`."""
        idx = ts_ms // self.tile_ms
        if idx <= t_ms // self.tile_ms - self.tiles:
            return None
        row = rows.get(idx)
        if row is None:
            row = rows[idx] = [0.0] * self.width
        return row


class DistinctWindow:
    """Exact distinct count over a sliding window; per entity a `{value: latest tile index}` dict."""

    __slots__ = ("tile_ms", "tiles")

    def __init__(self, tile_ms: int, tiles: int):
        self.tile_ms, self.tiles = tile_ms, tiles

    def add(self, seen: dict[str, int], value: str, ts_ms: int, t_ms: int) -> None:
        idx = ts_ms // self.tile_ms
        if idx <= t_ms // self.tile_ms - self.tiles:
            return
        if seen.get(value, idx - 1) < idx:
            seen[value] = idx

    def count(self, seen: dict[str, int], t_ms: int) -> int:
        lo = t_ms // self.tile_ms - self.tiles
        stale = [v for v, idx in seen.items() if idx <= lo]
        for v in stale:
            del seen[v]
        return len(seen)


def brute_force_window(events: Iterable[tuple[int, float]], t_ms: int, tile_ms: int, tiles: int) -> tuple[int, float]:
    """(count, sum) of (ts, value) pairs inside the tiled window at `t_ms`: the oracle's definition."""
    start, end = window_bounds(t_ms, tile_ms, tiles)
    count, total = 0, 0.0
    for ts, value in events:
        if start <= ts < end:
            count += 1
            total += value
    return count, total
