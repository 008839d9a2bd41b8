"""Columnar prediction batches: built from an arrow-avro batch or from dicts, they count the same.

`apply` over `PredictionBatch.from_arrow` (the bulk path), over (offset, dict) pairs (records decoded one
by one) and a per-record reference written here must leave the same partition state and report the same.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.bulk import BulkDecoder
from schemas.codec import AvroCodec
from schemas.topics import PREDICTIONS
from streams.drift.batch import PredictionBatch
from streams.drift.psi import histogram
from streams.drift.reference import SCORE, profile_of
from streams.drift.windows import Batch, Counts, PartitionState, apply
from tests.oracle import same

# inf and -inf in one window's values sum to NaN (as they did before the columns): expected here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

CODEC = AvroCodec(PREDICTIONS.schema)
BULK = BulkDecoder(PREDICTIONS.schema)
W, LATE = 60_000, 10_000
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMERIC = ["user.views_1h", "item.price"]  # int / float in DTYPES
CATEGORICAL = ["request.device", "user.tier"]  # str in DTYPES
UNPROFILED_FEATURE = "x.not_a_feature"  # logged, but in no profile (nor in DTYPES)


def _reference(rng: random.Random, shift: float) -> list[dict[str, Any]]:
    return [{"score": rng.random() * (1 - shift) + shift,
             "features": {"user.views_1h": rng.randint(0, 20) + int(shift * 10), "item.price": rng.uniform(1, 100),
                          "request.device": rng.choice(["mobile", "desktop", "tablet"]),
                          "user.tier": rng.choice(["gold", "silver", 3.0])}}  # 3.0 becomes category "3.0"
            for _ in range(500)]


_rng = random.Random(7)
PROFILES = {("m", "v1"): profile_of("m", "v1", _reference(_rng, 0.0), bins=8),
            ("m", "v2"): profile_of("m", "v2", [{**r, "features": {k: v for k, v in r["features"].items()
                                                                   if k != "user.tier"}}
                                                for r in _reference(_rng, 0.3)], bins=5),
            ("m2", "v2"): profile_of("m2", "v2", _reference(_rng, 0.1), bins=10)}
VERSIONS = [("m", "v1"), ("m", "v2"), ("m2", "v1"), ("m2", "v2")]  # ("m2", "v1") has no profile


def profile_for(model: str, version: str):
    return PROFILES.get((model, version))


# ---------------------------------------------------------------------------------------------- strategies

odd_floats = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e300, -1e300])
numbers = st.one_of(st.integers(-5, 30).map(float), st.floats(-1e3, 1e3), odd_floats)
categories = st.sampled_from(["mobile", "desktop", "tablet", "watch", "gold", "silver", "3.0", "", "ünï"])
FEATURE_VALUES = {
    "user.views_1h": st.one_of(st.none(), numbers, st.sampled_from(["12", "abc", "mobile"])),  # strings: not counted
    "item.price": st.one_of(st.none(), numbers),
    "request.device": st.one_of(st.none(), categories, numbers),  # numbers: binned as their text
    "user.tier": st.one_of(st.none(), categories, st.sampled_from([3.0, 3.5, math.nan])),
    UNPROFILED_FEATURE: st.one_of(st.none(), numbers, categories),
}

records = st.builds(
    lambda version, features, score, ts, pid: {
        "prediction_id": pid, "model": version[0], "model_version": version[1], "entities": {"user": pid},
        "features": features, "score": score, "ts": ts, "latency_ms": 1.0},
    st.sampled_from(VERSIONS),
    st.fixed_dictionaries({}, optional=FEATURE_VALUES),
    st.one_of(st.floats(0, 1), odd_floats),
    st.integers(-2 * W, 5 * W),
    st.text(max_size=3),
)

chunk = st.lists(st.tuples(st.integers(0, 60), records), min_size=1, max_size=25)
watermarks = st.one_of(st.none(), st.integers(-W, 7 * W))  # None: the state's own (as the job passes it)


# ---------------------------------------------------------------------------------------------- helpers



def decoded(items: list[tuple[int, dict[str, Any]]]) -> tuple[np.ndarray, list[bytes], list[tuple[int, dict]]]:
    """Offsets, Avro bodies, and (offset, dict) pairs as one-by-one decoding gives them."""
    bodies = [CODEC.encode(r) for _, r in items]
    offsets = np.array([o for o, _ in items], dtype=np.int64)
    return offsets, bodies, [(o, CODEC.decode(b)) for o, b in zip(offsets.tolist(), bodies)]


def arrow_batch(offsets: np.ndarray, bodies: list[bytes]) -> PredictionBatch:
    batch = BULK.decode(bodies)
    assert batch is not None, "valid prediction bodies must decode in bulk"
    return PredictionBatch.from_arrow(offsets, batch)


def state_as_plain(state: PartitionState) -> dict[str, Any]:
    return {"high_water": state.high_water, "watermark": state.watermark,
            "windows": {w: {"bins": c.bins, "sums": c.sums, "n": c.n, "rows": c.rows} for w, c in state.windows.items()}}


def result_as_plain(result: Batch) -> dict[str, Any]:
    return {"counted": result.counted, "duplicates": result.duplicates, "unprofiled": result.unprofiled,
            "late": [list(pair) for pair in result.late]}


def assert_same(a: Any, b: Any) -> None:
    assert same(a, b), (a, b)


def reference_apply(state: PartitionState, items: list[tuple[int, dict[str, Any]]], *, window_ms: int,
                    lateness_ms: int, watermark: int) -> Batch:
    """`apply`'s rules record by record, in plain Python (no columns)."""
    out = Batch()
    seen: set[int] = set()
    fresh = []
    for offset, record in items:
        if offset <= state.high_water or offset in seen:
            out.duplicates += 1
            continue
        seen.add(offset)
        fresh.append((offset, record))
    if not fresh:
        return out
    state.high_water = max(state.high_water, max(seen))
    on_time = []
    for offset, record in fresh:
        start = record["ts"] - record["ts"] % window_ms
        if start + window_ms + lateness_ms <= watermark:
            out.late.append((offset, record))
        else:
            on_time.append(record)
    if not on_time:
        return out
    state.watermark = max(state.watermark, max(r["ts"] for r in on_time))
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for record in on_time:
        version = (record["model"], record["model_version"])
        if profile_for(*version) is None:
            out.unprofiled[version] = out.unprofiled.get(version, 0) + 1
            continue
        groups.setdefault((*version, record["ts"] - record["ts"] % window_ms), []).append(record)
    for window, rows in groups.items():
        profile = profile_for(window[0], window[1])
        counts = state.windows.setdefault(window, Counts())
        counts.rows += len(rows)
        for name, bins in profile.bins.items():
            values = [r["score"] for r in rows] if name == SCORE else \
                [v for v in (r["features"].get(name) for r in rows) if v is not None]
            if bins.numeric:
                values = [v for v in values if not isinstance(v, str)]
                if values:
                    counts.add(name, histogram(bins, values), float(np.sum(np.asarray(values, np.float64))),
                               len(values))
            elif values:
                counts.add(name, histogram(bins, values), 0.0, len(values))
        out.counted += len(rows)
    return out


def run_all(chunks: list[tuple[list[tuple[int, dict]], int | None]], events: bool = False) -> None:
    """Apply the chunks in turn to three states (arrow batches, dict pairs, reference); equal after each."""
    states = [PartitionState(), PartitionState(), PartitionState()]
    for items, mark in chunks:
        offsets, bodies, pairs = decoded(items)
        marks = [s.watermark if mark is None else mark for s in states]
        kw = {"window_ms": W, "lateness_ms": LATE}
        got = [apply(states[0], arrow_batch(offsets, bodies), watermark=marks[0], profile_of=profile_for, **kw),
               apply(states[1], pairs, watermark=marks[1], profile_of=profile_for, **kw),
               reference_apply(states[2], pairs, watermark=marks[2], **kw)]
        for name in ("late", "duplicates", "unprofiled", "counted") if events else ():
            event(f"{name}: {bool(getattr(got[0], name))}")  # --hypothesis-show-statistics
        for result, state in zip(got[1:], states[1:]):
            assert_same(result_as_plain(got[0]), result_as_plain(result))
            assert_same(state_as_plain(states[0]), state_as_plain(state))


# ---------------------------------------------------------------------------------------------- tests


@SETTINGS
@given(chunks=st.lists(st.tuples(chunk, watermarks), min_size=1, max_size=4))
def test_apply_over_arrow_batches_equals_apply_over_dicts_and_the_reference(chunks) -> None:
    run_all(chunks, events=True)


def test_duplicates_late_unprofiled_and_unsorted_offsets_all_occur() -> None:
    """A fixed case that exercises every branch at once (the property above draws them at random)."""
    rng = random.Random(3)
    base = {"prediction_id": "p", "entities": {}, "latency_ms": 1.0}

    def rec(version: tuple[str, str], ts: int, **features: Any) -> dict[str, Any]:
        return {**base, "model": version[0], "model_version": version[1], "ts": ts, "score": rng.random(),
                "features": features}

    first = [(5, rec(("m", "v1"), 3 * W, **{"user.views_1h": 3.0, "request.device": "watch"})),
             (2, rec(("m2", "v1"), 3 * W + 1, **{"user.views_1h": "abc"})),
             (9, rec(("m", "v2"), 3 * W + 2, **{"request.device": 7.0, "user.tier": "gold"})),
             (2, rec(("m", "v1"), 3 * W + 3)),  # the same offset twice in one batch
             (7, rec(("m2", "v2"), 4 * W, **{"item.price": math.nan, "user.tier": 3.0}))]
    second = [(4, rec(("m", "v1"), 4 * W)),  # below high water: a duplicate
              (12, rec(("m", "v1"), 0)),  # window 0 closed by the watermark below: late
              (11, rec(("m2", "v1"), 4 * W + 5)),
              (10, rec(("m", "v1"), 3 * W + 7, **{"user.views_1h": None, "item.price": 42.0}))]
    run_all([(first, None), (second, W + LATE)])
    state = PartitionState()
    result = apply(state, arrow_batch(*decoded(second)[:2]), window_ms=W, lateness_ms=LATE, watermark=W + LATE,
                   profile_of=profile_for)
    assert [o for o, _ in result.late] == [12] and result.unprofiled == {("m2", "v1"): 1} and result.counted == 2
    assert state.high_water == 12


@SETTINGS
@given(items=chunk, data=st.data())
def test_subset_then_apply_equals_apply_over_the_filtered_records(items, data) -> None:
    offsets, bodies, pairs = decoded(items)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items))), dtype=bool)
    again = np.array(data.draw(st.lists(st.booleans(), min_size=int(keep.sum()), max_size=int(keep.sum()))),
                     dtype=bool)
    kept = [p for p, k in zip(pairs, keep) if k]
    kept_again = [p for p, k in zip(kept, again) if k]
    mark = data.draw(st.integers(0, 7 * W))
    kw = {"window_ms": W, "lateness_ms": LATE, "watermark": mark, "profile_of": profile_for}
    for whole in (arrow_batch(offsets, bodies), PredictionBatch.from_records(pairs)):
        for part, expected in ((whole.subset(keep), kept), (whole.subset(keep).subset(again), kept_again)):
            assert len(part) == len(expected)
            assert_same(part.records(np.arange(len(part))), [r for _, r in expected])
            left, right = PartitionState(), PartitionState()
            assert_same(result_as_plain(apply(left, part, **kw)), result_as_plain(apply(right, expected, **kw)))
            assert_same(state_as_plain(left), state_as_plain(right))


@SETTINGS
@given(items=chunk, data=st.data())
def test_both_constructors_give_the_same_columns_records_and_values(items, data) -> None:
    offsets, bodies, pairs = decoded(items)
    arrow, dicts = arrow_batch(offsets, bodies), PredictionBatch.from_records(pairs)
    for batch in (arrow, dicts):
        assert batch.offsets.tolist() == offsets.tolist()
        assert batch.ts.tolist() == [r["ts"] for _, r in pairs]
        assert_same(batch.score.tolist(), [r["score"] for _, r in pairs])
        assert [batch.versions[c] for c in batch.version_codes] == [(r["model"], r["model_version"]) for _, r in pairs]
        records = batch.records(np.arange(len(batch)))
        assert_same(records, [r for _, r in pairs])
        assert all(isinstance(r["features"], dict) and isinstance(r["entities"], dict) for r in records)
        rows = data.draw(st.lists(st.integers(0, len(pairs) - 1), max_size=5))
        assert_same(batch.records(rows), [pairs[i][1] for i in rows])
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items))), dtype=bool)
    for feature in [*NUMERIC, *CATEGORICAL, UNPROFILED_FEATURE, "never.logged"]:
        expected = [v for (_, r), m in zip(pairs, mask) if m for v in [r["features"].get(feature)] if v is not None]
        for batch in (arrow, dicts):
            nums, codes = batch.values(feature, mask)
            assert_same(nums.tolist(), [v for v in expected if not isinstance(v, str)])
            assert [batch.strings[c] for c in codes.tolist()] == [v for v in expected if isinstance(v, str)]


def test_a_body_with_a_feature_key_twice_is_not_taken_in_bulk() -> None:
    record = {"prediction_id": "p", "model": "m", "model_version": "v1", "entities": {}, "ts": 1000, "score": 0.5,
              "latency_ms": 1.0, "features": {"user.views_1h": 1.0, "user.views_1X": 15.0}}
    body = CODEC.encode(record).replace(b"user.views_1X", b"user.views_1h")  # e.g. a corrupt byte, or another writer
    one = CODEC.decode(body)
    assert one["features"] == {"user.views_1h": 15.0}  # one by one, the last value wins
    # the columns would keep both entries (and count the feature twice): the batch is decoded one by one
    assert BULK.decode([body] + [CODEC.encode(record)] * 3) is None
