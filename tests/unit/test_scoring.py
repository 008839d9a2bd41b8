"""Serving's plain-Python scorer for the default logistic-regression pipeline agrees with River's own."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, linear_model, preprocessing

from services.inference.models import build_model, fast_logreg, score, scorer
from streams.features.definitions import model_inputs

NUMERIC, CATEGORICAL = model_inputs("int", "float"), model_inputs("str")


def _vector(rnd: random.Random, levels: str = "abcd") -> dict:
    x: dict = {k: rnd.choice([0, 1, 7, 250]) if rnd.random() < 0.3 else rnd.uniform(-5, 500) for k in NUMERIC}
    x.update({k: rnd.choice(levels) for k in CATEGORICAL})
    return x


def _trained(seed: int, n: int) -> object:
    rnd = random.Random(seed)
    model = build_model("logreg")
    for _ in range(n):
        x = _vector(rnd)
        model.learn_one(x, rnd.random() < 0.2 + 0.001 * x[NUMERIC[0]])
    return model


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([0, 1, 3, 50, 400]))
def test_fast_scores_equal_rivers_up_to_summation_order(seed: int, n: int) -> None:
    model = _trained(seed, n)
    fast = fast_logreg(model)
    assert fast is not None
    rnd = random.Random(seed + 1)
    for _ in range(50):
        x = _vector(rnd, "abcdef")  # e, f: categories the model never saw
        assert _close(fast(x), score(model, x))


def test_a_constant_input_and_unseen_inputs_score_as_in_river() -> None:
    model = build_model("logreg")
    rnd = random.Random(3)
    for _ in range(200):  # the first numeric input never varies: its variance is 0, so it scales to 0.0
        x = _vector(rnd)
        x[NUMERIC[0]] = 5.0
        model.learn_one(x, rnd.random() < 0.5)
    fast = fast_logreg(model)
    assert fast is not None
    x = _vector(rnd)
    assert _close(fast(x), score(model, x))
    for missing in NUMERIC[:2]:  # the constant input (no term reads it) and a scaled one
        partial = {k: v for k, v in x.items() if k != missing}
        for f in (fast, lambda v: score(model, v)):  # River's Select raises; the predictor serves model_error
            with pytest.raises(KeyError):
                f(dict(partial))


def test_other_models_are_scored_by_river() -> None:
    for kind in ("arf", "naive_bayes"):
        model = build_model(kind)
        assert fast_logreg(model) is None
        x = _vector(random.Random(1))
        assert scorer(model)(x) == score(model, x)
    other = compose.Select(*NUMERIC) | preprocessing.StandardScaler() | linear_model.LogisticRegression()
    assert fast_logreg(other) is None  # not the default shape: River's path
