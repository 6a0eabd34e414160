"""The knn stage: a vote of the nearest training texts on the encoder's features, a feature head (``feature_head``)."""

from __future__ import annotations

from sklearn.neighbors import KNeighborsClassifier

from emotion_exp.config import KnnConfig
from emotion_exp.errors import UserError
from emotion_exp.stages import feature_head


def head(config: KnnConfig) -> KNeighborsClassifier:
    """``--n_neighbors`` nearest training texts by Euclidean distance vote, weighted by ``--weights``."""
    return KNeighborsClassifier(n_neighbors=config.n_neighbors, weights=config.weights)


def review(config: KnnConfig, fitted: KNeighborsClassifier) -> None:
    """A vote of k neighbours needs k training texts."""
    if fitted.n_samples_fit_ < config.n_neighbors:
        raise UserError(
            f"knn: --n_neighbors {config.n_neighbors} is more than the {fitted.n_samples_fit_} training texts it "
            "fits on; lower --n_neighbors, or train on more texts."
        )


run = feature_head.stage("knn", head, review=review)
