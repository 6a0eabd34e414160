"""Error analysis and calibration of predicted probabilities (no MLflow: the stages log the results).

Every function takes the gold label ids and the predicted probabilities of one split, rows in
the same order (one column per label). The loss is the cross-entropy of the gold label; the
confidence of a row is the probability of its predicted (most probable) label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import brier_score_loss

CALIBRATION_BINS = 15
HARDEST_ROWS = 30
CONFUSION_PAIRS = 15
EXAMPLES_PER_PAIR = 3
# Probabilities are clipped here before the log, so a gold label predicted at exactly 0 costs a finite loss.
MIN_PROBABILITY = 1e-15
# Texts are cut to this many characters in the markdown tables (the parquet file keeps them whole).
SHOWN_CHARACTERS = 200
# Temperatures outside this range mean the logits carry no usable scale; the fit stays inside it.
TEMPERATURE_RANGE = (0.05, 20.0)


def per_text(
    texts: Sequence[str], gold: Sequence[int], probabilities: np.ndarray, label_names: Sequence[str]
) -> pd.DataFrame:
    """One row per text: gold and predicted label, their probabilities and the cross-entropy loss."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    names = np.asarray(label_names, dtype=object)
    predicted = probabilities.argmax(axis=1)
    rows = np.arange(len(gold))
    gold_probability = probabilities[rows, gold]
    return pd.DataFrame(
        {
            "text": list(texts),
            "gold": names[gold],
            "predicted": names[predicted],
            "predicted_probability": probabilities[rows, predicted],
            "gold_probability": gold_probability,
            "loss": -np.log(np.clip(gold_probability, MIN_PROBABILITY, None)),
            "correct": predicted == gold,
        }
    )


def _cell(text: str) -> str:
    """A text as one markdown table cell: one line, pipes escaped, cut to ``SHOWN_CHARACTERS``."""
    text = " ".join(str(text).split())
    if len(text) > SHOWN_CHARACTERS:
        text = text[: SHOWN_CHARACTERS - 1] + "…"
    return text.replace("|", "\\|")


def hardest_markdown(table: pd.DataFrame, rows: int = HARDEST_ROWS, split: str = "validation") -> str:
    """The ``rows`` highest-loss texts as a markdown table: where label noise and real confusions show."""
    hardest = table.sort_values("loss", ascending=False, kind="stable").head(rows)
    lines = [
        f"# The {len(hardest)} highest-loss {split} texts",
        "",
        (
            f"Loss = -ln p(gold). Mean loss over all {len(table)} texts: {table['loss'].mean():.3f}. "
            "A confident mistake (high p(predicted), near-zero p(gold)) is either a real confusion or a wrong "
            "gold label: read the text and judge."
        ),
        "",
        "| # | loss | gold | p(gold) | predicted | p(predicted) | text |",
        "|---:|---:|---|---:|---|---:|---|",
    ]
    for rank, row in enumerate(hardest.itertuples(index=False), start=1):
        lines.append(
            f"| {rank} | {row.loss:.3f} | {row.gold} | {row.gold_probability:.3f} | {row.predicted} | "
            f"{row.predicted_probability:.3f} | {_cell(row.text)} |"
        )
    return "\n".join(lines) + "\n"


def confusion_pairs(table: pd.DataFrame, examples: int = EXAMPLES_PER_PAIR) -> pd.DataFrame:
    """Every (gold, predicted) pair of the mistakes: count, share of the gold class, the highest-loss examples."""
    gold_counts = table["gold"].value_counts()
    mistakes = table[~table["correct"]].sort_values("loss", ascending=False, kind="stable")
    pairs = [
        {
            "gold": gold,
            "predicted": predicted,
            "count": len(group),
            "share_of_gold": len(group) / gold_counts[gold],
            "examples": group["text"].head(examples).tolist(),
        }
        for (gold, predicted), group in mistakes.groupby(["gold", "predicted"], sort=False)
    ]
    frame = pd.DataFrame(pairs, columns=["gold", "predicted", "count", "share_of_gold", "examples"])
    return frame.sort_values(["count", "share_of_gold"], ascending=False, kind="stable").reset_index(drop=True)


def confusions_markdown(table: pd.DataFrame, pairs: int = CONFUSION_PAIRS, split: str = "validation") -> str:
    """The most frequent confusion pairs as markdown, each with its highest-loss example texts."""
    found = confusion_pairs(table)
    lines = [
        f"# Most frequent confusions ({split})",
        "",
        (
            f"{int((~table['correct']).sum())} of {len(table)} texts are mislabelled by the model. Share = the "
            "pair's count over all texts of the gold label. Examples: the pair's highest-loss texts."
        ),
        "",
        "| gold -> predicted | count | share of gold | examples |",
        "|---|---:|---:|---|",
    ]
    for pair in found.head(pairs).itertuples(index=False):
        shown = "<br>".join(f"“{_cell(text)}”" for text in pair.examples)
        lines.append(f"| {pair.gold} -> {pair.predicted} | {pair.count} | {pair.share_of_gold:.1%} | {shown} |")
    if found.empty:
        lines.append("| (no mistakes) | 0 | | |")
    return "\n".join(lines) + "\n"


def mean_loss(gold: Sequence[int], probabilities: np.ndarray) -> float:
    """Mean cross-entropy of the gold labels (natural log), comparable across every model stage."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    gold_probability = probabilities[np.arange(len(probabilities)), np.asarray(gold, dtype=np.int64)]
    return float(-np.log(np.clip(gold_probability, MIN_PROBABILITY, None)).mean())


def reliability(gold: Sequence[int], probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin ((i/bins, (i+1)/bins], the first closed): count, mean confidence, accuracy.

    Empty bins have NaN confidence and accuracy.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(gold)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / counts
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame(
        {"lower": edges[:-1], "upper": edges[1:], "count": counts, "confidence": mean_confidence, "accuracy": accuracy}
    )


def expected_calibration_error(gold: Sequence[int], probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence over equal-width bins."""
    table = reliability(gold, probabilities, bins)
    filled = table[table["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / table["count"].sum())


def brier_score(gold: Sequence[int], probabilities: np.ndarray) -> float:
    """Multiclass Brier score: mean over texts of the squared distance to the one-hot gold (0 best, 2 worst)."""
    # In its own dtype: sklearn checks that rows sum to one within that dtype's precision.
    probabilities = np.asarray(probabilities)
    labels = np.arange(probabilities.shape[1])
    return float(brier_score_loss(np.asarray(gold), probabilities, labels=labels, scale_by_half=False))


def calibration_metrics(gold: Sequence[int], probabilities: np.ndarray, prefix: str) -> dict[str, float]:
    """``<prefix>_loss``, ``<prefix>_ece`` and ``<prefix>_brier`` of one split."""
    return {
        f"{prefix}_loss": mean_loss(gold, probabilities),
        f"{prefix}_ece": expected_calibration_error(gold, probabilities),
        f"{prefix}_brier": brier_score(gold, probabilities),
    }


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature``; the argmax never changes with the temperature."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the mean NLL on the fitting data before and after."""

    temperature: float
    loss_before: float
    loss_after: float


def fit_temperature(logits: np.ndarray, gold: Sequence[int]) -> TemperatureFit:
    """Temperature scaling (Guo et al., 2017): the one scalar T minimising the NLL of softmax(logits / T).

    The NLL is convex in 1/T, so a bounded scalar search finds the optimum; T > 1 softens an
    over-confident model, T < 1 sharpens an under-confident one.
    """
    logits = np.asarray(logits, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    rows = np.arange(len(gold))

    def nll(inverse_temperature: float) -> float:
        return float(-log_softmax(logits * inverse_temperature, axis=1)[rows, gold].mean())

    low, high = TEMPERATURE_RANGE
    found = minimize_scalar(nll, bounds=(1 / high, 1 / low), method="bounded", options={"xatol": 1e-6})
    return TemperatureFit(temperature=float(1 / found.x), loss_before=nll(1.0), loss_after=float(found.fun))
