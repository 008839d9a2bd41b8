"""Drift windows against a brute-force oracle: per-window PSI, lateness, duplicates, sustained alerts."""

from __future__ import annotations

import random

import numpy as np

from streams.drift.psi import SustainedAlerts, psi
from streams.drift.reference import SCORE, profile_of
from streams.drift.windows import PartitionState, apply, close_due, window_metrics

W, LATE = 60_000, 10_000


def _record(rng: random.Random, ts: int, shift: float = 0.0) -> dict:
    return {"model": "m", "model_version": "v1", "ts": ts, "score": min(1.0, max(0.0, rng.gauss(0.3 + shift, 0.1))),
            "features": {"user.views_1h": rng.randint(0, 20) + int(shift * 40), "request.device":
                         rng.choice(["mobile", "desktop"] if shift == 0 else ["app"])}}


def _reference(rng: random.Random):
    rows = [_record(rng, 0) for _ in range(3000)]
    return profile_of("m", "v1", rows, bins=10)


def _run(records: list[dict], profile, partitions: int = 2, batch: int = 37):
    """Feed records round-robin to partitions in small batches, closing windows as the watermark moves."""
    states = [PartitionState() for _ in range(partitions)]
    alerts, metrics, late = SustainedAlerts(3), [], []
    feeds = [[(o, r) for o, r in enumerate(records[p::partitions])] for p in range(partitions)]
    cursor = [0] * partitions
    while any(cursor[p] < len(feeds[p]) for p in range(partitions)):
        for p in range(partitions):
            watermark = max(s.watermark for s in states)
            chunk = feeds[p][cursor[p]:cursor[p] + batch]
            cursor[p] += batch
            result = apply(states[p], chunk, window_ms=W, lateness_ms=LATE, watermark=watermark,
                           profile_of=lambda m, v: profile)
            late += result.late
            closed = close_due(states, window_ms=W, lateness_ms=LATE, watermark=max(s.watermark for s in states))
            for window, counts in closed.items():
                metrics += window_metrics(window, counts, profile, W, alerts)
    closed = close_due(states, window_ms=W, lateness_ms=LATE, watermark=10**15)
    for window, counts in closed.items():
        metrics += window_metrics(window, counts, profile, W, alerts)
    return metrics, late, states


def _stream(rng: random.Random, windows: int, per_window: int, shift_from: int | None = None) -> list[dict]:
    out = []
    for k in range(windows):
        shift = 0.25 if shift_from is not None and k >= shift_from else 0.0
        times = sorted(k * W + rng.randrange(W) for _ in range(per_window))
        out += [_record(rng, t, shift) for t in times]
    for i in range(len(out) - 1):  # mild disorder within the lateness
        if rng.random() < 0.2 and abs(out[i]["ts"] - out[i + 1]["ts"]) < LATE // 2:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def test_window_psi_equals_brute_force_over_the_same_records() -> None:
    rng = random.Random(5)
    profile = _reference(rng)
    records = _stream(rng, windows=6, per_window=400, shift_from=3)
    metrics, late, _ = _run(records, profile)
    assert not late
    for metric in metrics:
        rows = [r for r in records if metric["window_start"] <= r["ts"] < metric["window_end"]]
        bins = profile.bins[metric["feature"]]
        values = [r["score"] if metric["feature"] == SCORE else r["features"][metric["feature"]] for r in rows]
        if bins.numeric:
            counts = np.bincount(np.searchsorted(bins.edges, np.asarray(values, float), side="right"),
                                 minlength=len(bins.expected))
        else:
            counts = [sum(1 for v in values if v == c) for c in bins.categories]
            counts.append(len(values) - sum(counts))
        assert metric["n"] == len(rows)
        assert abs(metric["psi"] - psi(bins.expected, counts)) < 1e-9


def test_a_stable_stream_raises_no_alert_and_a_shift_alerts_at_window_k_plus_n_minus_1() -> None:
    rng = random.Random(9)
    profile = _reference(rng)
    stable, _, _ = _run(_stream(rng, windows=8, per_window=500), profile)
    assert not any(m["alert"] for m in stable)
    assert all(m["severity"] == "ok" for m in stable if m["feature"] == SCORE)
    k = 3
    shifted, _, _ = _run(_stream(rng, windows=8, per_window=500, shift_from=k), profile)
    score = sorted((m for m in shifted if m["feature"] == SCORE), key=lambda m: m["window_start"])
    assert [m["severity"] == "critical" for m in score] == [i >= k for i in range(8)]
    assert [m["alert"] for m in score] == [i >= k + 3 - 1 for i in range(8)]


def test_late_records_within_lateness_land_in_their_window_and_later_ones_are_reported() -> None:
    rng = random.Random(2)
    profile = _reference(rng)
    state = PartitionState()
    on_time = [(o, _record(rng, W + 1000 * o)) for o in range(10)]
    apply(state, on_time, window_ms=W, lateness_ms=LATE, watermark=0, profile_of=lambda m, v: profile)
    # a record of window 0 arrives while the watermark is inside window 1 but within the lateness of window 0
    inside = apply(state, [(10, _record(rng, 30_000))], window_ms=W, lateness_ms=LATE, watermark=W + 5_000,
                   profile_of=lambda m, v: profile)
    assert inside.counted == 1 and state.windows[("m", "v1", 0)].rows == 1
    beyond = apply(state, [(11, _record(rng, 30_000))], window_ms=W, lateness_ms=LATE, watermark=W + LATE,
                   profile_of=lambda m, v: profile)
    assert beyond.counted == 0 and [o for o, _ in beyond.late] == [11]


def test_records_read_again_after_a_restart_are_not_counted_twice() -> None:
    rng = random.Random(4)
    profile = _reference(rng)
    state = PartitionState()
    items = [(o, _record(rng, 1000 * o)) for o in range(50)]
    apply(state, items[:30], window_ms=W, lateness_ms=LATE, watermark=0, profile_of=lambda m, v: profile)
    again = apply(state, items, window_ms=W, lateness_ms=LATE, watermark=0, profile_of=lambda m, v: profile)
    assert again.duplicates == 30 and again.counted == 20
    assert state.windows[("m", "v1", 0)].rows == 50
