"""River models by name, fed the logged feature vector: numbers scaled, strings one-hot, raw times dropped.

Every kind is a River pipeline, so it learns one label at a time and pickles into the model store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from river import compose, forest, linear_model, naive_bayes, optim, preprocessing, tree

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
