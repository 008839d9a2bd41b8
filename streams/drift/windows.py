"""Event-time tumbling windows of the prediction log, binned with a reference profile. Pure: no I/O.

State is kept per source partition (`PartitionState`): its open windows' bin counts, the highest
offset it has applied, and its event-time watermark. That is the unit the drift job persists in one
write, so after a restart the records it re-reads (offset <= `high_water`) are skipped: nothing is
counted twice. A window closes when the watermark (the latest event time seen on any partition)
passes its end by the allowed lateness; a record for a window already closed is late.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.drift.batch import PredictionBatch
from streams.drift.psi import SustainedAlerts, histogram, psi, severity, z_score
from streams.drift.reference import SCORE, Profile

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
    unprofiled: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, version) -> rows


def window_start(ts: int, window_ms: int) -> int:
    return ts - ts % window_ms


def apply(state: PartitionState, items: PredictionBatch | Sequence[tuple[int, dict[str, Any]]], *, window_ms: int,
          lateness_ms: int, watermark: int, profile_of: Callable[[str, str], Profile | None]) -> Batch:
    """Count one partition's records (a `PredictionBatch`, or (offset, PredictionLog dict) pairs) into `state`.

    `watermark` is the job-wide one before this batch: windows it has closed take no more rows. A record
    at or below the state's high water was counted (or dead-lettered) before: a duplicate.
    """
    batch = items if isinstance(items, PredictionBatch) else PredictionBatch.from_records(list(items))
    out = Batch()
    if not len(batch):
        return out
    order = np.argsort(batch.offsets, kind="stable")
    offsets = batch.offsets[order]
    fresh = np.zeros(len(batch), dtype=bool)
    fresh[order] = (offsets > state.high_water) & np.r_[True, offsets[1:] != offsets[:-1]]
    out.duplicates = int(len(batch) - fresh.sum())
    if not fresh.any():
        return out
    state.high_water = max(state.high_water, int(offsets[-1]))
    start = batch.ts - batch.ts % window_ms
    late = fresh & (start <= watermark - window_ms - lateness_ms)  # not start + …: ts near 2**63 would wrap
    if late.any():
        rows = np.flatnonzero(late)
        out.late = list(zip(batch.offsets[rows].tolist(), batch.records(rows), strict=True))
    on_time = fresh & ~late
    if not on_time.any():
        return out
    state.watermark = max(state.watermark, int(batch.ts[on_time].max()))
    for code, (model, version) in enumerate(batch.versions):
        of_version = on_time & (batch.version_codes == code)
        if not of_version.any():
            continue
        profile = profile_of(model, version)
        if profile is None:
            out.unprofiled[(model, version)] = int(of_version.sum())
            continue
        for start_ms in np.unique(start[of_version]).tolist():
            rows = of_version & (start == start_ms)
            counts = state.windows.setdefault((model, version, start_ms), Counts())
            counts.rows += int(rows.sum())
            for name, bins in profile.bins.items():
                numbers, strings = (batch.score[rows], np.zeros(0, np.int64)) if name == SCORE else \
                    batch.values(name, rows)
                if bins.numeric:  # a string logged for a numeric feature is not counted
                    if len(numbers):
                        counts.add(name, histogram(bins, numbers), float(np.sum(numbers)), len(numbers))
                elif len(numbers) or len(strings):
                    index = {c: i for i, c in enumerate(bins.categories or ())}
                    other = len(bins.expected) - 1
                    lookup = np.fromiter((index.get(s, other) for s in batch.strings), dtype=np.int64,
                                         count=len(batch.strings))
                    binned = np.bincount(lookup[strings], minlength=len(bins.expected)).astype(np.int64)
                    if len(numbers):  # a number logged for a categorical feature is binned as its text
                        binned += histogram(bins, [str(v) for v in numbers.tolist()])
                    counts.add(name, binned, 0.0, len(numbers) + len(strings))
        out.counted += int(of_version.sum())
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
