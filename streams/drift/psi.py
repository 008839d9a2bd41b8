"""Population Stability Index over fixed bins frozen from a reference profile. Pure numpy, no I/O.

PSI = sum over bins of (a - e) * ln(a / e), with `a` the window's share and `e` the reference's
share of each bin. An empty bin on either side would make the term infinite, so a share of 0 is
replaced by EPSILON (1e-4, i.e. 0.01 %) before the sum; the other shares are left as they are.
Bins are never re-fitted per window (unlike Evidently's default): the same edges for every window
make windows comparable with each other and with the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

EPSILON = 1e-4
WARNING, CRITICAL = 0.1, 0.25
OTHER = "__other__"  # the bin of categories not seen in the reference


@dataclass(frozen=True)
class Bins:
    """Fixed bins of one feature. Numeric: sorted interior `edges` (k-1 edges, k bins; a value equal to
    an edge goes to the bin above it). Categorical: `categories` plus a last bin for any other value."""

    expected: tuple[float, ...]  # reference share of each bin, sums to 1
    edges: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None
    mean: float | None = None  # reference mean and std (numeric), for the mean-shift z-score
    std: float | None = None
    n: int = 0

    @property
    def numeric(self) -> bool:
        return self.edges is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bins:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


def numeric_bins(values: np.ndarray, bins: int = 10) -> Bins:
    """Quantile edges of the reference values (duplicates merged, so fewer bins for lumpy data)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Bins(expected=(1.0,), edges=(), mean=None, std=None, n=0)
    edges = np.unique(np.quantile(values, np.arange(1, bins) / bins))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    return Bins(expected=tuple((counts / values.size).tolist()), edges=tuple(edges.tolist()),
                mean=float(values.mean()), std=float(values.std()), n=int(values.size))


def categorical_bins(values: list[Any], max_categories: int = 20) -> Bins:
    """The reference's most frequent categories (up to `max_categories`), the rest in one `other` bin."""
    uniques, counts = np.unique(np.asarray([str(v) for v in values], dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    kept = tuple(str(uniques[i]) for i in order)
    shares = [float(counts[i]) / len(values) for i in order] if values else []
    return Bins(expected=(*shares, max(0.0, 1.0 - sum(shares))), categories=kept, n=len(values))


def histogram(bins: Bins, values: Any) -> np.ndarray:
    """Counts of `values` per bin of `bins` (int64, one per bin)."""
    if bins.numeric:
        data = np.asarray(values, dtype=np.float64)
        data = data[np.isfinite(data)]
        return np.bincount(np.searchsorted(np.asarray(bins.edges), data, side="right"),
                           minlength=len(bins.expected)).astype(np.int64)
    index = {c: i for i, c in enumerate(bins.categories or ())}
    other = len(bins.expected) - 1
    return np.bincount([index.get(str(v), other) for v in values], minlength=len(bins.expected)).astype(np.int64)


def psi(expected: Any, counts: Any, epsilon: float = EPSILON) -> float:
    """PSI of a window's bin `counts` against the reference shares `expected`; 0.0 for an empty window."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    actual = np.where(counts == 0, epsilon, counts / total)
    reference = np.where(np.asarray(expected, dtype=np.float64) == 0, epsilon, np.asarray(expected, np.float64))
    return float(np.sum((actual - reference) * np.log(actual / reference)))


def z_score(bins: Bins, n: int, total: float) -> float | None:
    """How many standard errors the window's mean is from the reference mean (None if undefined)."""
    if not bins.numeric or n == 0 or bins.mean is None or not bins.std:
        return None
    return float((total / n - bins.mean) / (bins.std / math.sqrt(n)))


def severity(value: float) -> str:
    return "critical" if value >= CRITICAL else "warning" if value >= WARNING else "ok"


class SustainedAlerts:
    """Raises an alert for a (model, feature) only once it was critical in `windows` consecutive windows."""

    def __init__(self, windows: int = 3):
        self.windows = windows
        self.streak: dict[tuple[str, str], int] = {}

    def observe(self, key: tuple[str, str], level: str) -> bool:
        streak = self.streak.get(key, 0) + 1 if level == "critical" else 0
        self.streak[key] = streak
        return streak >= self.windows
