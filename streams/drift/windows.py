"""Event-time tumbling windows of the prediction log, binned with a reference profile. Pure: no I/O.

State is kept per source partition (`PartitionState`): its open windows' bin counts, the highest
offset it has applied, and its event-time watermark. That is the unit the drift job persists in one
write, so after a restart the records it re-reads (offset <= `high_water`) are skipped: nothing is
counted twice. A window closes when the watermark (the latest event time seen on any partition)
passes its end by the allowed lateness; a record for a window already closed is late.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.drift.psi import SustainedAlerts, histogram, psi, severity, z_score
from streams.drift.reference import DTYPES, SCORE, Profile

WindowId = tuple[str, str, int]  # (model, model_version, window start ms)


@dataclass
class Counts:
    """Bin counts, value sums and row counts per feature of one window (or one partition's part of it)."""

    bins: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    rows: int = 0

    def add(self, name: str, counts: np.ndarray, total: float, n: int) -> None:
        have = self.bins.get(name)
        self.bins[name] = counts.tolist() if have is None else (np.asarray(have) + counts).tolist()
        self.sums[name] = self.sums.get(name, 0.0) + total
        self.n[name] = self.n.get(name, 0) + n

    def merge(self, other: Counts) -> None:
        for name, counts in other.bins.items():
            self.add(name, np.asarray(counts, dtype=np.int64), other.sums[name], other.n[name])
        self.rows += other.rows


@dataclass
class PartitionState:
    windows: dict[WindowId, Counts] = field(default_factory=dict)
    high_water: int = -1
    watermark: int = 0


@dataclass
class Batch:
    """What one call of `apply` did: rows counted, and the records it could not count (with why)."""

    counted: int = 0
    duplicates: int = 0
    late: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    unprofiled: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def window_start(ts: int, window_ms: int) -> int:
    return ts - ts % window_ms


def apply(state: PartitionState, items: Iterable[tuple[int, dict[str, Any]]], *, window_ms: int,
          lateness_ms: int, watermark: int, profile_of: Callable[[str, str], Profile | None]) -> Batch:
    """Count one partition's (offset, PredictionLog record) items, in offset order, into `state`.

    `watermark` is the job-wide one before this batch: windows it has closed take no more rows.
    """
    out = Batch()
    groups: dict[WindowId, list[dict[str, Any]]] = {}
    for offset, record in items:
        if offset <= state.high_water:
            out.duplicates += 1
            continue
        state.high_water = offset
        start = window_start(record["ts"], window_ms)
        if start + window_ms + lateness_ms <= watermark:
            out.late.append((offset, record))
            continue
        state.watermark = max(state.watermark, record["ts"])
        if profile_of(record["model"], record["model_version"]) is None:
            out.unprofiled.append((offset, record))
            continue
        groups.setdefault((record["model"], record["model_version"], start), []).append(record)
    for window, records in groups.items():
        profile = profile_of(window[0], window[1])
        assert profile is not None
        counts = state.windows.setdefault(window, Counts())
        counts.rows += len(records)
        for name, bins in profile.bins.items():
            if name == SCORE:
                values = [r["score"] for r in records]
            else:
                values = [v for v in (r["features"].get(name) for r in records) if v is not None]
            if not values:
                continue
            numeric = DTYPES.get(name) != "str"
            total = float(np.sum(np.asarray(values, dtype=np.float64))) if numeric else 0.0
            counts.add(name, histogram(bins, values), total, len(values))
        out.counted += len(records)
    return out


def close_due(states: Iterable[PartitionState], *, window_ms: int, lateness_ms: int,
              watermark: int) -> dict[WindowId, Counts]:
    """Remove and merge (across partitions) every window that the watermark has closed."""
    closed: dict[WindowId, Counts] = {}
    for state in states:
        for window in [w for w in state.windows if w[2] + window_ms + lateness_ms <= watermark]:
            closed.setdefault(window, Counts()).merge(state.windows.pop(window))
    return dict(sorted(closed.items(), key=lambda item: item[0][2]))


def window_metrics(window: WindowId, counts: Counts, profile: Profile, window_ms: int,
                   alerts: SustainedAlerts) -> list[dict[str, Any]]:
    """One DriftMetric record per profiled feature (and the score) of a closed window."""
    model, version, start = window
    out = []
    for name, bins in profile.bins.items():
        bin_counts = counts.bins.get(name, [0] * len(bins.expected))
        n = counts.n.get(name, 0)
        value = psi(bins.expected, bin_counts)
        level = severity(value) if n else "ok"
        out.append({"window_start": start, "window_end": start + window_ms, "model": model,
                    "model_version": version, "feature": name, "psi": value,
                    "z_score": z_score(bins, n, counts.sums.get(name, 0.0)), "n": n, "severity": level,
                    "alert": alerts.observe((f"{model}:{version}", name), level), "ts": start + window_ms})
    return out
