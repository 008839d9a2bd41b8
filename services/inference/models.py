"""River models by name, fed the logged feature vector: numbers scaled, strings one-hot, raw times dropped.

Every kind is a River pipeline, so it learns one label at a time and pickles into the model store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from river import compose, forest, linear_model, naive_bayes, optim, preprocessing, tree
from river.utils.math import sigmoid

from schemas.errors import ModelError
from streams.features.definitions import model_inputs


def _encoded(head: Any) -> compose.Pipeline:
    # Columns picked by declared dtype (Select), not by runtime type checks (SelectType): ~2x faster per row.
    numeric = compose.Select(*model_inputs("int", "float")) | preprocessing.StandardScaler()
    categorical = compose.Select(*model_inputs("str")) | preprocessing.OneHotEncoder()
    return (numeric + categorical) | head


KINDS: dict[str, Callable[[], Any]] = {
    "logreg": lambda: _encoded(linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4)),
    "arf": lambda: _encoded(forest.ARFClassifier(n_models=10, seed=42)),
    "hoeffding": lambda: _encoded(tree.HoeffdingAdaptiveTreeClassifier(seed=42)),
    "naive_bayes": lambda: _encoded(naive_bayes.GaussianNB()),
}


def build_model(kind: str) -> Any:
    """A fresh, untrained model of `kind`."""
    factory = KINDS.get(kind)
    if factory is None:
        raise ModelError(f"unknown model kind {kind!r}; set STREAMML_MODEL_KIND to one of: {', '.join(KINDS)}")
    return factory()


def score(model: Any, features: dict[str, Any]) -> float:
    """P(label = 1); an untrained model or one that saw a single class still answers."""
    proba = model.predict_proba_one(features)
    return float(proba.get(True, proba.get(1, 0.0)))


Scorer = Callable[[dict[str, Any]], float]


def scorer(model: Any) -> Scorer:
    """What serving calls per vector: `fast_logreg(model)` when the model has the default logistic-regression
    shape, else River's own `predict_proba_one` (through `score`)."""
    return fast_logreg(model) or (lambda features: score(model, features))


def fast_logreg(model: Any) -> Scorer | None:
    """A plain-Python scorer for a frozen `logreg` pipeline, ~5x faster than River's `predict_proba_one`
    (no intermediate dicts, no Select/Union/OneHot passes); None for any other model shape.

    The arithmetic is River's: scaled = (x - mean) / var**0.5 (0 when var is 0), one-hot 1s, logit =
    weights · x + intercept, River's sigmoid. Only the order of the sum differs (River sums in its dict
    order), so scores agree to the last bits, not bit for bit. The model must not learn afterwards:
    its state is read once here (serving loads each version once and never trains it).
    """
    steps = list(getattr(model, "steps", {}).values())
    if (type(model) is not compose.Pipeline or len(steps) != 2 or type(steps[0]) is not compose.TransformerUnion
            or type(steps[1]) is not linear_model.LogisticRegression or type(steps[1].loss) is not optim.losses.Log
            or compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT):
        return None
    union, head = steps
    scaled: tuple[str, ...] | None = None
    one_hot: tuple[str, ...] | None = None
    scaler: Any = None
    encoder: Any = None
    for branch in union.transformers.values():
        parts = list(getattr(branch, "steps", {}).values())
        if type(branch) is not compose.Pipeline or len(parts) != 2 or type(parts[0]) is not compose.Select:
            return None
        keys, step = tuple(sorted(parts[0].keys)), parts[1]
        if (type(step) is preprocessing.StandardScaler and scaled is None and step.with_std
                and step.window_size is None):
            scaled, scaler = keys, step
        elif (type(step) is preprocessing.OneHotEncoder and one_hot is None and not step.drop_zeros
              and not step.drop_first and step.categories is None):
            one_hot, encoder = keys, step
        else:
            return None
    if scaled is None or one_hot is None:
        return None
    weights = head._weights.to_dict()
    if not all(math.isfinite(w) for w in weights.values()) or set(scaled) & set(encoder._zero_dict):
        return None  # 0 * inf would make River's zero entries count; a key in both branches: River's union order
    intercept = float(head.intercept)
    # (key, mean, std, weight) per scaled input River would give a non-zero term; a zero variance scales to 0.0
    terms = tuple((k, scaler.means[k], scaler.vars[k] ** 0.5, weights[k]) for k in scaled
                  if k in weights and scaler.vars.get(k, 0.0))
    # River's Select raises KeyError on a missing input: so does this (the inputs no term reads are looked up)
    read = {term[0] for term in terms}
    unread = tuple(k for k in scaled if k not in read)

    def fast(x: dict[str, Any]) -> float:
        for k in unread:
            x[k]
        logit = 0.0
        for k, mean, std, w in terms:
            logit += w * ((x[k] - mean) / std)
        for k in one_hot:
            logit += weights.get(f"{k}_{x[k]}", 0.0)
        return float(sigmoid(logit + intercept))

    return fast
