"""The ops dashboard's query math (rate, histogram quantile, aggregation, ratio) and its PromQL twin."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ops.history import History, series_key
from services.ops.queries import Quantile, Rate, Ratio, Value, bucket_quantile, counter_total
from services.ops.views import VIEWS, sample_names


def _history(rounds: list[dict], step: float = 5.0) -> History:
    h = History(len(rounds) + 1)
    for i, samples in enumerate(rounds):
        h.record(1000.0 + i * step, dict(samples))
    return h


def _c(name: str, **labels: str) -> tuple:
    return series_key(name, labels)


def test_counter_total_treats_a_drop_as_a_restart_and_keeps_gaps():
    values = np.array([np.nan, 10, 15, np.nan, 3, 8])
    total = counter_total(values)
    assert math.isnan(total[0]) and math.isnan(total[3])
    assert list(total[[1, 2, 4, 5]]) == [0, 5, 8, 13]  # 10->15 (+5), restart ->3 (+3), 3->8 (+5)


@given(st.lists(st.integers(0, 50), min_size=2, max_size=40))
@settings(max_examples=200, deadline=None)
def test_rate_equals_brute_force_increase_over_the_window(steps):
    counts = np.cumsum(steps).astype(float)
    h = _history([{_c("x_total", t="a"): float(v)} for v in counts])
    frame = h.frame(0)
    [series] = Rate("x_total", window_s=20).evaluate(frame)
    for i, got in enumerate(series.values):
        inside = [j for j in range(len(counts)) if frame.ts[i] - 20 <= frame.ts[j] <= frame.ts[i]]
        j = inside[0]
        if j == i:
            assert math.isnan(got)
        else:
            assert got == (counts[i] - counts[j]) / (frame.ts[i] - frame.ts[j])


def test_rate_sums_by_label_and_series_appear_later():
    rounds = [{_c("e_total", topic="a", partition="0"): 0.0, _c("e_total", topic="a", partition="1"): 0.0},
              {_c("e_total", topic="a", partition="0"): 10.0, _c("e_total", topic="a", partition="1"): 5.0,
               _c("e_total", topic="b", partition="0"): 0.0},
              {_c("e_total", topic="a", partition="0"): 20.0, _c("e_total", topic="a", partition="1"): 10.0,
               _c("e_total", topic="b", partition="0"): 50.0}]
    out = {s.label: s.values for s in Rate("e_total", by=("topic",), window_s=5).evaluate(_history(rounds).frame(0))}
    assert list(out["a"][1:]) == [3.0, 3.0]
    assert math.isnan(out["b"][1]) and out["b"][2] == 10.0


def _brute_quantile(q: float, bounds: list[float], cumulative: list[float]) -> float:
    """histogram_quantile as Prometheus documents it, one bucket at a time."""
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if math.isinf(bounds[b]):
        return bounds[-2]
    lower, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], cumulative[b - 1])
    return lower + (bounds[b] - lower) * (rank - below) / (cumulative[b] - below)


@given(st.lists(st.integers(0, 20), min_size=4, max_size=4), st.floats(0.01, 0.99))
@settings(max_examples=300, deadline=None)
def test_bucket_quantile_equals_the_documented_algorithm(per_bucket, q):
    bounds = [0.1, 0.5, 1.0, math.inf]
    cumulative = list(np.cumsum(per_bucket).astype(float))
    got = bucket_quantile(q, np.array(bounds), np.array(cumulative)[:, None])[0]
    want = _brute_quantile(q, bounds, cumulative)
    assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-9)


def test_quantile_reads_bucket_increases_over_the_window():
    def round_(counts: list[float]) -> dict:
        return {_c("lat_bucket", le=le): c for le, c in zip(("0.01", "0.1", "+Inf"), counts, strict=True)}
    # 100 old observations all slow, then 100 new ones all fast: the window must see only the new ones.
    h = _history([round_([0, 0, 100]), round_([0, 0, 100]), round_([100, 100, 200])])
    [p99] = Quantile("lat", q=0.99, window_s=5, scale=1000).evaluate(h.frame(0))
    assert math.isnan(p99.values[0]) and math.isnan(p99.values[1])  # no observations in the window
    assert math.isclose(p99.values[2], 9.9)  # 99th of 100 in [0, 10 ms]


def test_value_aggregates_and_ratio_matches_groups():
    rounds = [{_c("lag", group="g", partition="0"): 5.0, _c("lag", group="g", partition="1"): 7.0,
               _c("deg_total"): 0.0, _c("pred_total"): 0.0},
              {_c("lag", group="g", partition="0"): 1.0, _c("lag", group="g", partition="1"): 2.0,
               _c("deg_total"): 5.0, _c("pred_total"): 50.0}]
    frame = _history(rounds).frame(0)
    [total] = Value("lag", by=("group",), agg="sum").evaluate(frame)
    [worst] = Value("lag", by=("group",), agg="max").evaluate(frame)
    assert list(total.values) == [12.0, 3.0] and list(worst.values) == [7.0, 2.0]
    share = Ratio("d", scale=100, numerator=Rate("deg_total", window_s=5), denominator=Rate("pred_total", window_s=5))
    assert share.evaluate(frame)[0].values[1] == 10.0
    none_degraded = Ratio("d", numerator=Rate("nothing_total", window_s=5, absent_as_zero=True),
                          denominator=Rate("pred_total", window_s=5))
    assert none_degraded.evaluate(frame)[0].values[1] == 0.0


def test_promql_renders_the_same_query():
    assert Rate("e_total", by=("topic",), where=(("reason", "=~", "late|invalid"),)).promql() == \
        'sum by (topic) (rate(e_total{reason=~"late|invalid"}[60s]))'
    assert Quantile("lat", by=("endpoint",), q=0.99, window_s=300, scale=1000).promql() == \
        "(histogram_quantile(0.99, sum by (le, endpoint) (rate(lat_bucket[300s])))) * 1000"
    assert Value("g", by=("group",), agg="max").promql() == "max by (group) (g)"
    assert Rate("d_total", absent_as_zero=True).promql() == "(sum (rate(d_total[60s])) or vector(0))"


def test_history_ring_keeps_the_newest_rounds_in_order():
    h = History(3)
    for i in range(5):
        h.record(float(i), {series_key("g", {}): float(i * 10)})
    frame = h.frame(0)
    assert list(frame.ts) == [2.0, 3.0, 4.0]
    assert list(frame.of("g")[0][1]) == [20.0, 30.0, 40.0]
    assert list(h.frame(3.5).ts) == [4.0]


def test_views_have_unique_panel_ids_and_the_history_keeps_what_they_read():
    ids = [p.id for v in VIEWS for p in v.panels]
    assert len(ids) == len(set(ids))
    assert [v.name for v in VIEWS] == ["pipeline", "serving", "drift", "model"]
    assert "streamml_features_freshness_seconds_bucket" in sample_names()
