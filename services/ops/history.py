"""A short in-memory metrics history: one row per collection round, one column per series.

Columns are numpy ring buffers aligned on the round index, so a query reads aligned arrays and a
series missing from a round (process down, label gone) is NaN there, as Prometheus shows a gap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
SeriesKey = tuple[str, Labels]  # (sample name, labels)


def series_key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    return name, tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Frame:
    """The rounds in a time range: timestamps (epoch s, ascending) and each sample name's series."""

    ts: np.ndarray
    series: dict[str, list[tuple[dict[str, str], np.ndarray]]]

    def of(self, name: str) -> list[tuple[dict[str, str], np.ndarray]]:
        return self.series.get(name, [])


class History:
    """Fixed-capacity rounds of samples; thread-safe (one writer, many readers)."""

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError("history capacity must be at least 2 rounds")
        self.capacity = capacity
        self._ts = np.full(capacity, np.nan)
        self._cols: dict[SeriesKey, np.ndarray] = {}
        self._rounds = 0
        self._lock = threading.Lock()

    def record(self, ts: float, samples: Mapping[SeriesKey, float]) -> None:
        """Append one round; series absent from it read as NaN at this round."""
        with self._lock:
            i = self._rounds % self.capacity
            self._ts[i] = ts
            for col in self._cols.values():
                col[i] = np.nan
            for key, value in samples.items():
                col = self._cols.get(key)
                if col is None:
                    col = self._cols[key] = np.full(self.capacity, np.nan)
                col[i] = value
            self._rounds += 1

    @property
    def rounds(self) -> int:
        return self._rounds

    def frame(self, since: float, names: set[str] | None = None) -> Frame:
        """Rounds with timestamp >= `since`, oldest first; only sample names in `names` if given."""
        with self._lock:
            n = min(self._rounds, self.capacity)
            start = self._rounds % self.capacity if self._rounds > self.capacity else 0
            order = (np.arange(n) + start) % self.capacity
            ts = self._ts[order]
            keep = order[ts >= since]
            series: dict[str, list[tuple[dict[str, str], np.ndarray]]] = {}
            for (name, labels), col in self._cols.items():
                if names is None or name in names:
                    values = col[keep]
                    if not np.all(np.isnan(values)):
                        series.setdefault(name, []).append((dict(labels), values.copy()))
            return Frame(self._ts[keep].copy(), series)
