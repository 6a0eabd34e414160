"""The probe stage: logistic regression on the encoder's features, a feature head (``feature_head``)."""

from __future__ import annotations

from typing import Any

from emotion_exp import baselines
from emotion_exp.config import ProbeConfig
from emotion_exp.stages import feature_head


def head(config: ProbeConfig) -> Any:
    """The logistic regression, unfitted."""
    return baselines.probe_classifier(
        C=config.C, class_weight=config.class_weight, max_iter=config.max_iter, seed=config.seed
    )


def review(config: ProbeConfig, fitted: Any) -> str | None:
    """A solver that used up ``--max_iter`` is worth a warning on the run."""
    if baselines.converged(fitted, config.max_iter):
        return None
    return f"The logistic regression did not converge in {config.max_iter} iterations; raise --max_iter."


run = feature_head.stage("probe", head, review=review)
