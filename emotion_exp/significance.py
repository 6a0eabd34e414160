"""How sure a score is: bootstrap intervals over texts, paired differences and exact McNemar tests.

A 2,000-text split's accuracy near 0.93 has a standard error of about 0.57 points, so two models
that differ by less than a point may differ by chance alone. Every score a user reads carries
its 95% interval (``score_intervals``), and two models scored on the same texts are compared on
those texts (``paired_difference``, ``mcnemar``), which is far more sensitive than comparing two
intervals. Resampling is ``scipy.stats.bootstrap`` (BCa, seeded, vectorised over resamples); the
McNemar test is ``scipy.stats.binomtest`` on the texts where exactly one of the two is right.

No MLflow here: the stages log what these functions return.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from emotion_exp.contract import probability_column

CONFIDENCE = 0.95
RESAMPLES = 2000
METHOD = "BCa"
BCA_MAX_TEXTS = 5_000
"""Above this many texts the percentile method replaces BCa, whose jackknife grows with the square
of the texts (10,000 texts: 2.6 s a metric) while its correction shrinks to nothing."""
METRICS = ("accuracy", "f1_weighted", "f1_macro")
# Resamples scored at once: bounds memory to about BATCH x texts x 8 bytes per array.
BATCH = 500


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two models on the same texts.

    ``only_a``: texts A gets right and B wrong; ``only_b`` the reverse. Under the null hypothesis
    that both models are equally accurate, each discordant text is a fair coin.
    """

    only_a: int
    only_b: int
    pvalue: float


def _f1(gold: np.ndarray, predicted: np.ndarray, n_labels: int, average: str, axis: int) -> np.ndarray:
    """F1 along ``axis`` for every leading index at once (rows are resamples), as scikit-learn's ``f1_score``.

    Labels absent from both gold and predicted score 0 (``zero_division=0``), as in ``metrics.evaluate``.
    """
    gold = np.moveaxis(gold, axis, -1)
    predicted = np.moveaxis(predicted, axis, -1)
    scores = []
    supports = []
    for label in range(n_labels):
        is_gold = gold == label
        is_predicted = predicted == label
        true_positive = np.sum(is_gold & is_predicted, axis=-1)
        support = np.sum(is_gold, axis=-1)
        denominator = support + np.sum(is_predicted, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores.append(np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0))
        supports.append(support)
    scores_array = np.stack(scores, axis=-1)
    if average == "macro":
        return scores_array.mean(axis=-1)
    weights = np.stack(supports, axis=-1).astype(np.float64)
    total = weights.sum(axis=-1)
    return np.where(total > 0, (scores_array * weights).sum(axis=-1) / np.maximum(total, 1), 0.0)


def metric_function(metric: str, n_labels: int) -> Callable[..., np.ndarray]:
    """``metric(gold, predicted, axis)``, vectorised over leading axes, for ``scipy.stats.bootstrap``."""
    if metric == "accuracy":
        return lambda gold, predicted, axis=-1: np.mean(gold == predicted, axis=axis)
    if metric in ("f1_weighted", "f1_macro"):
        average = metric.removeprefix("f1_")
        return lambda gold, predicted, axis=-1: _f1(gold, predicted, n_labels, average, axis)
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def _bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    *,
    seed: int,
    resamples: int,
    confidence: float,
) -> Interval:
    """A paired, vectorised BCa bootstrap over rows of ``data``; degenerate data gives a zero-width interval."""
    estimate = float(statistic(*data, axis=-1))
    method = METHOD if data[0].shape[-1] <= BCA_MAX_TEXTS else "percentile"
    with warnings.catch_warnings():
        # Data where every resample gives the same value (every text right) have no spread: the interval is
        # the point itself, which BCa reports as NaN with a warning.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap(
            data,
            statistic,
            n_resamples=resamples,
            batch=BATCH,
            vectorized=True,
            paired=True,
            axis=-1,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        low = high = estimate
    return Interval(estimate, min(low, estimate), max(high, estimate))


def score_interval(
    gold: Sequence[int],
    predicted: Sequence[int],
    n_labels: int,
    metric: str = "accuracy",
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Interval:
    """One metric's interval from a bootstrap over texts (resampling gold and predicted labels together)."""
    gold_array, predicted_array = _labels(gold, predicted)
    return _bootstrap(
        (gold_array, predicted_array),
        metric_function(metric, n_labels),
        seed=seed,
        resamples=resamples,
        confidence=confidence,
    )


def score_intervals(
    gold: Sequence[int],
    predicted: Sequence[int],
    n_labels: int,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """The interval of each of ``METRICS`` (accuracy, weighted and macro F1)."""
    return {
        metric: score_interval(gold, predicted, n_labels, metric, seed=seed, resamples=resamples, confidence=confidence)
        for metric in METRICS
    }


def interval_metrics(prefix: str, intervals: dict[str, Interval]) -> dict[str, float]:
    """``<prefix>_<metric>_ci_low`` and ``_ci_high`` for each interval, as the stages log them."""
    logged = {}
    for metric, interval in intervals.items():
        logged[f"{prefix}_{metric}_ci_low"] = interval.low
        logged[f"{prefix}_{metric}_ci_high"] = interval.high
    return logged


def method_params() -> dict[str, str]:
    """How the logged intervals were computed, logged once per run as ``ci_*`` params."""
    return {
        "ci_method": f"bootstrap over texts, {METHOD} (percentile above {BCA_MAX_TEXTS:,} texts)",
        "ci_resamples": str(RESAMPLES),
        "ci_confidence": str(CONFIDENCE),
    }


def paired_difference(
    gold: Sequence[int],
    predicted_a: Sequence[int],
    predicted_b: Sequence[int],
    n_labels: int,
    metric: str = "accuracy",
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The interval of ``metric(A) - metric(B)`` from a bootstrap over texts that resamples both models' rows together.

    Pairing removes the variation the two models share (which texts are hard), so the interval of
    the difference is much narrower than the two models' own intervals suggest.
    """
    gold_array, a_array = _labels(gold, predicted_a)
    _, b_array = _labels(gold, predicted_b)
    score = metric_function(metric, n_labels)

    def difference(gold: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return score(gold, a, axis=axis) - score(gold, b, axis=axis)

    return _bootstrap((gold_array, a_array, b_array), difference, seed=seed, resamples=resamples, confidence=confidence)


def mcnemar(gold: Sequence[int], predicted_a: Sequence[int], predicted_b: Sequence[int]) -> McNemar:
    """The exact (binomial) McNemar test on the texts where exactly one of A and B is right; two-sided."""
    gold_array, a_array = _labels(gold, predicted_a)
    _, b_array = _labels(gold, predicted_b)
    a_right, b_right = a_array == gold_array, b_array == gold_array
    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    discordant = only_a + only_b
    pvalue = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, pvalue)


def _labels(gold: Sequence[int], predicted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    gold_array = np.asarray(gold, dtype=np.int64)
    predicted_array = np.asarray(predicted, dtype=np.int64)
    if gold_array.shape != predicted_array.shape or gold_array.ndim != 1:
        raise ValueError(
            f"gold and predicted labels must be two equally long lists; got shapes {gold_array.shape} and "
            f"{predicted_array.shape}"
        )
    if len(gold_array) == 0:
        raise ValueError("no texts to score: an interval needs at least one")
    return gold_array, predicted_array


# --- per-text predictions: what any two runs on the same data can be compared by later ----------------

PREDICTIONS_ARTIFACT = "predictions/per_text.parquet"
"""Every evaluated split's predictions of a run, one row per text (``predictions_table``)."""


def predictions_table(
    split: str, gold: Sequence[int], probabilities: np.ndarray, label_names: Sequence[str]
) -> pd.DataFrame:
    """One row per text of ``split``: its row index, gold and predicted label names, and every label's probability."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    names = np.asarray(label_names, dtype=object)
    gold_array = np.asarray(gold, dtype=np.int64)
    table = pd.DataFrame(
        {
            "split": split,
            "row": np.arange(len(gold_array), dtype=np.int64),
            "gold": names[gold_array],
            "predicted": names[probabilities.argmax(axis=1)],
        }
    )
    for index, name in enumerate(label_names):
        table[probability_column(name)] = probabilities[:, index]
    return table


def label_names_of(table: pd.DataFrame) -> list[str]:
    """The label names of a ``predictions_table``, in id order (from its probability columns)."""
    prefix = probability_column("")
    return [str(c).removeprefix(prefix) for c in table.columns if str(c).startswith(prefix)]


def label_ids(table: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Gold and predicted label ids of one split of a ``predictions_table``, in row order."""
    rows = table[table["split"] == split].sort_values("row")
    index = {name: i for i, name in enumerate(label_names_of(table))}
    return rows["gold"].map(index).to_numpy(np.int64), rows["predicted"].map(index).to_numpy(np.int64)


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same texts of one split: the paired difference and McNemar's test."""

    split: str
    difference: Interval
    """``accuracy(A) - accuracy(B)`` with its paired bootstrap interval."""
    test: McNemar

    def __str__(self) -> str:
        d = self.difference
        return f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}], McNemar p={self.test.pvalue:.2g}"


def compare_predictions(table_a: pd.DataFrame, table_b: pd.DataFrame, split: str, *, seed: int = 0) -> PairedComparison:
    """Compare two runs' ``predictions_table`` on ``split``, text by text.

    Both must hold the same texts with the same gold labels (the same data digest); a mismatch is a
    ``ValueError`` saying what differs.
    """
    names_a, names_b = label_names_of(table_a), label_names_of(table_b)
    if names_a != names_b:
        raise ValueError(f"the two runs predict different labels: {names_a} and {names_b}")
    gold_a, predicted_a = label_ids(table_a, split)
    gold_b, predicted_b = label_ids(table_b, split)
    if len(gold_a) == 0 or len(gold_b) == 0:
        raise ValueError(f"the {split} split was not scored by both runs ({len(gold_a)} and {len(gold_b)} texts)")
    if len(gold_a) != len(gold_b) or not np.array_equal(gold_a, gold_b):
        raise ValueError(
            f"the two runs scored different {split} texts ({len(gold_a):,} and {len(gold_b):,} rows, or other gold "
            "labels): only runs on the same data can be compared text by text"
        )
    difference = paired_difference(gold_a, predicted_a, predicted_b, len(names_a), seed=seed)
    return PairedComparison(split, difference, mcnemar(gold_a, predicted_a, predicted_b))


def best_other(scores: dict[str, float], stage: str) -> str | None:
    """The stage with the highest score among the others (ties: the first listed); None when alone."""
    others = [name for name in scores if name != stage]
    return max(others, key=lambda name: scores[name]) if others else None


MAX_INTERVAL_WIDTH = 0.2
"""A split whose 95% intervals can be wider than this cannot tell stages apart by the gaps that matter."""


def widest_interval(texts: int) -> float:
    """How wide the exact 95% interval of an accuracy can be on ``texts`` texts: Clopper-Pearson's at 0.5.

    A bootstrap interval can be narrower than the data allows (1.000 [1.000, 1.000] on 30 texts,
    where every text was right): the split's size, not one score, says what it can tell.
    """
    if texts < 1:
        return 1.0
    interval = stats.binomtest(texts // 2, texts).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(interval.high - interval.low)


def too_few_texts(texts: int, shown_score: str) -> str | None:
    """One line saying that ``texts`` validation texts cannot separate stages, or None where they can.

    ``shown_score`` is the score a reader just saw (``val accuracy 0.475 [0.325, 0.625]``).
    """
    width = widest_interval(texts)
    if width <= MAX_INTERVAL_WIDTH:
        return None
    return (
        f"{texts:,} validation texts are too few to tell stages apart: a 95% interval on them can be {width:.2f} wide "
        f"(over {MAX_INTERVAL_WIDTH:g}; {shown_score}). More validation texts narrow it: more data, or a larger "
        "--validation_fraction for a single file."
    )
