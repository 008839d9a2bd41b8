"""Dashboard queries that mean the same thing in two places: as PromQL for Prometheus/Grafana, and
evaluated here over the ops service's own history for the built-in dashboard.

Only what the dashboards need: a counter's rate, a histogram's quantile, a gauge's value, and the
ratio of two of those, each aggregated `by` some labels. The math follows Prometheus: counter
resets count as restarts from zero; quantiles interpolate linearly inside the bucket that holds the
rank and answer the highest finite bound when the rank falls in +Inf. Unlike Prometheus, a rate is
not extrapolated to the window's edges.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.ops.history import Frame

Matcher = tuple[str, str, str]  # (label, op, value); op is one of = != =~ !~


@dataclass(frozen=True)
class Series:
    """One line of a panel: its legend and values aligned with the frame's timestamps."""

    label: str
    values: np.ndarray


def _matches(labels: dict[str, str], where: tuple[Matcher, ...]) -> bool:
    for name, op, value in where:
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value}.get(op)
        if ok is None:
            ok = re.fullmatch(value, have) is not None
            ok = ok if op == "=~" else not ok
        if not ok:
            return False
    return True


def _selector(name: str, where: tuple[Matcher, ...]) -> str:
    if not where:
        return name
    return name + "{" + ",".join(f"{label}{op}{json.dumps(value)}" for label, op, value in where) + "}"


def _aggregate(groups: dict[tuple[str, ...], list[np.ndarray]], how: str) -> dict[tuple[str, ...], np.ndarray]:
    out = {}
    for key, arrays in groups.items():
        stack = np.vstack(arrays)
        present = ~np.all(np.isnan(stack), axis=0)
        with np.errstate(all="ignore"):
            value = {"sum": np.nansum, "max": np.nanmax, "min": np.nanmin}[how](np.where(
                np.isnan(stack), {"sum": 0.0, "max": -np.inf, "min": np.inf}[how], stack), axis=0)
        out[key] = np.where(present, value, np.nan)
    return out


def counter_total(values: np.ndarray) -> np.ndarray:
    """Reset-adjusted running increase of a counter (a drop means a restart from 0); NaN where absent."""
    absent = np.isnan(values)
    if absent.all():
        return values.copy()
    idx = np.where(~absent, np.arange(len(values)), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = values[idx]
    first = int(np.argmax(~absent))
    filled[:first] = values[first]
    step = np.diff(filled)
    step = np.where(step < 0, filled[1:], step)
    total = np.concatenate([[0.0], np.cumsum(step)])
    total[absent] = np.nan
    return total


def window_start(ts: np.ndarray, window_s: float) -> np.ndarray:
    """For each round, the index of the first round inside [t - window, t]."""
    return np.searchsorted(ts, ts - window_s, side="left")


def increase(ts: np.ndarray, values: np.ndarray, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(increase over the window, the seconds it spans) per round; NaN where fewer than 2 rounds."""
    total = counter_total(values)
    n = len(ts)
    if n == 0:
        return total, total
    # the first round in each window where this series exists (it may appear mid-window)
    present = np.where(np.isnan(total), n, np.arange(n))
    next_present = np.minimum.accumulate(present[::-1])[::-1]
    j = np.minimum(next_present[window_start(ts, window_s)], n - 1)
    have = (j < np.arange(n)) & ~np.isnan(total)
    return np.where(have, total - total[j], np.nan), np.where(have, ts - ts[j], np.nan)


def bucket_quantile(q: float, bounds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Prometheus histogram_quantile: `bounds` ascending upper bounds (last +Inf), `counts` cumulative
    per bucket, shape (buckets, rounds). NaN where a round has no observations."""
    counts = np.maximum.accumulate(np.nan_to_num(counts, nan=-1.0), axis=0)
    total = counts[-1]
    rank = q * total
    idx = np.argmax(counts >= rank[None, :], axis=0)
    cols = np.arange(counts.shape[1])
    upper = bounds[idx]
    lower = np.where(idx > 0, bounds[np.maximum(idx - 1, 0)], 0.0)
    below = np.where(idx > 0, counts[np.maximum(idx - 1, 0), cols], 0.0)
    inside = counts[idx, cols] - below
    with np.errstate(all="ignore"):
        value = lower + (upper - lower) * np.where(inside > 0, (rank - below) / inside, 1.0)
    value = np.where(np.isinf(upper), bounds[-2] if len(bounds) > 1 else np.nan, value)
    value = np.where((idx == 0) & (bounds[0] <= 0), bounds[0], value)
    return np.where(total > 0, value, np.nan)


@dataclass(frozen=True)
class Query:
    """Common fields: labels to aggregate by, label matchers, legend template, scale factor."""

    metric: str
    by: tuple[str, ...] = ()
    where: tuple[Matcher, ...] = ()
    legend: str = ""  # "{label}" placeholders; default: the `by` values
    scale: float = 1.0

    def label(self, group: dict[str, str]) -> str:
        if self.legend:
            return self.legend.format_map(_Missing(group))
        return " ".join(group[b] for b in self.by) or self.metric

    def grafana_legend(self) -> str:
        template = self.legend or " ".join("{" + b + "}" for b in self.by)
        return re.sub(r"\{(\w+)\}", r"{{\1}}", template)

    def promql(self) -> str:
        expr = self._promql()
        return f"({expr}) * {self.scale:g}" if self.scale != 1.0 else expr

    def evaluate(self, frame: Frame) -> list[Series]:
        groups = self._groups(frame)
        return [Series(self.label(dict(zip(self.by, key, strict=True))), values * self.scale)
                for key, values in sorted(groups.items())]

    def names(self) -> set[str]:
        """The sample names this query reads from the history."""
        return {self.metric}

    def _by(self) -> str:
        return f" by ({', '.join(self.by)})" if self.by else ""

    def _select(self, frame: Frame, name: str) -> list[tuple[dict[str, str], np.ndarray]]:
        return [(labels, values) for labels, values in frame.of(name) if _matches(labels, self.where)]

    def _promql(self) -> str:
        raise NotImplementedError

    def _groups(self, frame: Frame) -> dict[tuple[str, ...], np.ndarray]:
        raise NotImplementedError


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True)
class Value(Query):
    """A gauge's latest value per round, aggregated by labels."""

    agg: Literal["sum", "max", "min"] = "sum"

    def _promql(self) -> str:
        return f"{self.agg}{self._by()} ({_selector(self.metric, self.where)})"

    def _groups(self, frame: Frame) -> dict[tuple[str, ...], np.ndarray]:
        groups: dict[tuple[str, ...], list[np.ndarray]] = {}
        for labels, values in self._select(frame, self.metric):
            groups.setdefault(tuple(labels.get(b, "") for b in self.by), []).append(values)
        return _aggregate(groups, self.agg)


@dataclass(frozen=True)
class Rate(Query):
    """Per-second rate of a counter over `window_s`, summed by labels."""

    window_s: int = 60
    absent_as_zero: bool = False  # no series at all reads as 0 (PromQL: `or vector(0)`); only without `by`

    def _promql(self) -> str:
        expr = f"sum{self._by()} (rate({_selector(self.metric, self.where)}[{self.window_s}s]))"
        return f"({expr} or vector(0))" if self.absent_as_zero and not self.by else expr

    def _groups(self, frame: Frame) -> dict[tuple[str, ...], np.ndarray]:
        groups: dict[tuple[str, ...], list[np.ndarray]] = {}
        for labels, values in self._select(frame, self.metric):
            inc, span = increase(frame.ts, values, self.window_s)
            with np.errstate(all="ignore"):
                groups.setdefault(tuple(labels.get(b, "") for b in self.by), []).append(inc / span)
        out = _aggregate(groups, "sum")
        if not out and self.absent_as_zero and not self.by and len(frame.ts):
            out[()] = np.where(window_start(frame.ts, self.window_s) < np.arange(len(frame.ts)), 0.0, np.nan)
        return out


@dataclass(frozen=True)
class Quantile(Query):
    """`q`-quantile of a histogram (`metric` without `_bucket`) over `window_s`, by labels."""

    q: float = 0.99
    window_s: int = 300

    def names(self) -> set[str]:
        return {f"{self.metric}_bucket"}

    def _promql(self) -> str:
        by = ", ".join(("le", *self.by))
        return (f"histogram_quantile({self.q:g}, sum by ({by}) "
                f"(rate({_selector(self.metric + '_bucket', self.where)}[{self.window_s}s])))")

    def _groups(self, frame: Frame) -> dict[tuple[str, ...], np.ndarray]:
        buckets: dict[tuple[str, ...], dict[float, list[np.ndarray]]] = {}
        for labels, values in self._select(frame, f"{self.metric}_bucket"):
            inc, _ = increase(frame.ts, values, self.window_s)
            key = tuple(labels.get(b, "") for b in self.by)
            buckets.setdefault(key, {}).setdefault(float(labels["le"]), []).append(inc)
        out = {}
        for key, by_bound in buckets.items():
            bounds = np.array(sorted(by_bound))
            if not np.isinf(bounds[-1]):
                continue  # a histogram always has +Inf; without it the quantile is undefined
            counts = np.vstack([_aggregate({(): by_bound[b]}, "sum")[()] for b in bounds])
            out[key] = np.where(np.isnan(counts).any(axis=0), np.nan, bucket_quantile(self.q, bounds, counts))
        return out


@dataclass(frozen=True)
class Ratio(Query):
    """numerator / denominator, matched on the `by` labels both share (NaN where the denominator is 0)."""

    numerator: Query | None = None
    denominator: Query | None = None

    def names(self) -> set[str]:
        assert self.numerator is not None and self.denominator is not None
        return self.numerator.names() | self.denominator.names()

    def _promql(self) -> str:
        assert self.numerator is not None and self.denominator is not None
        return f"({self.numerator.promql()}) / ({self.denominator.promql()})"

    def _groups(self, frame: Frame) -> dict[tuple[str, ...], np.ndarray]:
        assert self.numerator is not None and self.denominator is not None
        num, den = self.numerator._groups(frame), self.denominator._groups(frame)
        out = {}
        for key in num.keys() & den.keys():
            with np.errstate(all="ignore"):
                out[key] = np.where(den[key] > 0, num[key] * self.numerator.scale / (den[key] * self.denominator.scale),
                                    np.nan)
        return out
