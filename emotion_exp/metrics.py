"""Accuracy, F1, per-class report and the row-normalised confusion matrix, from scikit-learn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

if TYPE_CHECKING:
    from emotion_exp.significance import Interval


@dataclass(frozen=True)
class Evaluation:
    """One split's scores; ``confusion`` rows are true labels, normalised to sum to one."""

    accuracy: float
    f1_weighted: float
    f1_macro: float
    report: dict[str, Any]
    confusion: np.ndarray
    intervals: Mapping[str, Interval] = field(default_factory=dict)
    """Each headline score's 95% bootstrap interval (``significance.score_intervals``), once computed."""

    def shown(self, metric: str) -> str:
        """``0.933 [0.922, 0.944]``: the score with its interval where it has one."""
        interval = self.intervals.get(metric)
        return str(interval) if interval is not None else f"{getattr(self, metric):.4f}"

    def metrics(self, prefix: str) -> dict[str, float]:
        """The headline scores under the metric names every stage shares (``val_accuracy``, ...)."""
        return {
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_f1_weighted": self.f1_weighted,
            f"{prefix}_f1_macro": self.f1_macro,
        }


def evaluate(y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]) -> Evaluation:
    """Score predictions against every label, including labels a split happens to lack."""
    labels = np.arange(len(label_names))
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        f1_weighted=float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        f1_macro=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        report=classification_report(
            y_true, y_pred, labels=labels, target_names=list(label_names), output_dict=True, zero_division=0
        ),
        confusion=confusion_matrix(y_true, y_pred, labels=labels, normalize="true"),
    )
