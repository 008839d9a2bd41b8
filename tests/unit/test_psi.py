"""PSI, bins and sustained alerts against an independent plain-numpy implementation written here."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.drift.psi import (
    EPSILON,
    Bins,
    SustainedAlerts,
    categorical_bins,
    histogram,
    numeric_bins,
    psi,
    severity,
    z_score,
)


def _oracle_psi(reference: np.ndarray, window: np.ndarray, bins: int) -> float:
    """Textbook PSI, written independently: decile edges of the reference, eps for empty bins."""
    edges = np.unique(np.quantile(reference, [k / bins for k in range(1, bins)]))
    def shares(x: np.ndarray) -> np.ndarray:
        idx = np.array([int(np.sum(edges <= v)) for v in x])
        counts = np.array([np.sum(idx == b) for b in range(len(edges) + 1)], dtype=float)
        out = counts / len(x)
        out[out == 0] = EPSILON
        return out
    e, a = shares(reference), shares(window)
    return float(sum((ai - ei) * np.log(ai / ei) for ai, ei in zip(a, e)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-2, 2), scale=st.floats(0.2, 3), n=st.integers(5, 400))
def test_psi_equals_the_plain_numpy_oracle(seed: int, shift: float, scale: float, n: int) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.normal(0, 1, 500)
    window = rng.normal(shift, scale, n)
    bins = numeric_bins(reference, 10)
    assert abs(psi(bins.expected, histogram(bins, window)) - _oracle_psi(reference, window, 10)) < 1e-9


def test_identical_distributions_have_zero_psi_and_a_shift_is_critical() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 20_000)
    bins = numeric_bins(reference)
    assert psi(bins.expected, histogram(bins, reference)) < 1e-12
    assert psi(bins.expected, histogram(bins, rng.normal(0, 1, 20_000))) < 0.01
    shifted = psi(bins.expected, histogram(bins, rng.normal(1.0, 1, 20_000)))
    assert severity(shifted) == "critical"
    assert severity(0.0) == "ok" and severity(0.1) == "warning" and severity(0.25) == "critical"


def test_categorical_bins_put_unseen_values_in_other() -> None:
    bins = categorical_bins(["a", "a", "b", "c"], max_categories=2)
    assert bins.categories == ("a", "b") and bins.expected == (0.5, 0.25, 0.25)
    assert histogram(bins, ["a", "z", "z", "b"]).tolist() == [1, 1, 2]


def test_empty_window_and_lumpy_reference() -> None:
    bins = numeric_bins(np.zeros(100))  # every quantile the same: one edge, two bins
    assert bins.edges == (0.0,) and histogram(bins, [0.0, -1.0, 5.0]).tolist() == [1, 2]
    assert psi(bins.expected, [0, 0]) == 0.0
    assert Bins.from_dict(bins.to_dict()) == bins


def test_z_score_of_the_window_mean() -> None:
    bins = numeric_bins(np.array([0.0, 2.0] * 50))  # mean 1, std 1
    assert z_score(bins, n=4, total=4 * 2.0) == 2.0
    assert z_score(categorical_bins(["x"]), 4, 1.0) is None


def test_an_alert_needs_n_consecutive_critical_windows() -> None:
    alerts = SustainedAlerts(windows=3)
    key = ("m", "score")
    levels = ["critical", "critical", "warning", "critical", "critical", "critical", "critical"]
    assert [alerts.observe(key, level) for level in levels] == [False, False, False, False, False, True, True]
