"""scikit-learn baselines: the dummy floor, the logistic-regression probe and TF-IDF."""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier


def fit_dummy(labels: np.ndarray, *, strategy: str = "most_frequent", seed: int = 42) -> DummyClassifier:
    """A ``DummyClassifier`` fitted on the train labels; it ignores its inputs by design."""
    return DummyClassifier(strategy=strategy, random_state=seed).fit(np.zeros((len(labels), 1)), labels)
