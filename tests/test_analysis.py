"""Error analysis and calibration: the per-text table, the markdown tables, ECE, Brier, temperature scaling."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from emotion_exp import analysis, plots

LABELS = ("sadness", "joy", "anger")


def overconfident_logits(rows: int = 3000, seed: int = 0, scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Gold labels drawn from softmax(logits), then the logits scaled up: a model ``scale`` times too sure."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(rows, len(LABELS)))
    probabilities = analysis.scaled_probabilities(logits)
    gold = np.array([rng.choice(len(LABELS), p=p) for p in probabilities])
    return logits * scale, gold


def test_per_text_table_has_gold_prediction_probabilities_and_loss() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.0, 1.0, 0.0]])
    table = analysis.per_text(["a", "b", "c"], [0, 1, 0], probabilities, LABELS)
    assert table["predicted"].tolist() == ["sadness", "anger", "joy"]
    assert table["gold"].tolist() == ["sadness", "joy", "sadness"]
    assert table["predicted_probability"].tolist() == [0.7, 0.6, 1.0]
    assert table["gold_probability"].tolist() == [0.7, 0.3, 0.0]
    assert table["loss"].iloc[:2].tolist() == pytest.approx([-np.log(0.7), -np.log(0.3)])
    assert np.isfinite(table["loss"].iloc[2]) and table["loss"].iloc[2] > 30  # p(gold) = 0 costs a finite loss
    assert table["correct"].tolist() == [True, False, False]
    assert analysis.mean_loss([0, 1, 0], probabilities) == pytest.approx(table["loss"].mean())
    assert analysis.mean_loss([0, 1], probabilities[:2]) == pytest.approx(
        log_loss([0, 1], probabilities[:2], labels=[0, 1, 2])
    )


def test_hardest_markdown_lists_the_highest_losses_first_and_keeps_the_table_intact() -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3), size=50)
    texts = [f"text {i} | with a pipe\nand a newline" for i in range(50)]
    table = analysis.per_text(texts, rng.integers(0, 3, 50), probabilities, LABELS)
    markdown = analysis.hardest_markdown(table, rows=30)
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 30
    losses = [float(row.split(" | ")[1]) for row in rows]
    assert losses == sorted(losses, reverse=True)
    assert losses[0] == pytest.approx(table["loss"].max(), abs=1e-3)
    assert all(row.count(" | ") == 6 for row in rows)  # the pipe in the text is escaped, the newline gone
    assert "\\|" in rows[0]


def test_confusion_pairs_count_share_and_examples() -> None:
    texts = ["s1", "s2", "s3", "s4", "j1", "j2", "a1"]
    gold = [0, 0, 0, 0, 1, 1, 2]
    # s1, s2 and s3 predicted as joy (s3 most confidently), j1 as anger; the rest right.
    probabilities = np.array(
        [
            [0.3, 0.6, 0.1],
            [0.4, 0.5, 0.1],
            [0.1, 0.8, 0.1],
            [0.9, 0.05, 0.05],
            [0.1, 0.2, 0.7],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
        ]
    )
    table = analysis.per_text(texts, gold, probabilities, LABELS)
    pairs = analysis.confusion_pairs(table)
    assert pairs[["gold", "predicted", "count"]].values.tolist() == [["sadness", "joy", 3], ["joy", "anger", 1]]
    assert pairs["share_of_gold"].tolist() == [0.75, 0.5]
    assert pairs["examples"].iloc[0] == ["s3", "s1", "s2"]  # highest loss first
    markdown = analysis.confusions_markdown(table)
    assert "| sadness -> joy | 3 | 75.0% |" in markdown and "“s3”<br>“s1”<br>“s2”" in markdown


def test_reliability_bins_and_ece_by_hand() -> None:
    # Two texts at confidence 0.9 (one right), two at 0.5 (both right): bins 14 and 7 of 15.
    probabilities = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.3, 0.5, 0.2]])
    gold = [0, 1, 0, 1]
    bins = analysis.reliability(gold, probabilities)
    assert len(bins) == 15 and bins["count"].sum() == 4
    filled = bins[bins["count"] > 0]
    assert filled.index.tolist() == [7, 13]  # 0.5 lies in (7/15, 8/15]; 0.9 in (13/15, 14/15]
    assert filled["accuracy"].tolist() == [1.0, 0.5]
    assert filled["confidence"].tolist() == pytest.approx([0.5, 0.9])
    assert analysis.expected_calibration_error(gold, probabilities) == pytest.approx(0.5 * 0.5 + 0.5 * 0.4)
    # Confidence exactly 1 goes to the last bin, an exact edge to the bin below it.
    edge = analysis.reliability([0, 0], np.array([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0]]))
    assert edge["count"].iloc[14] == 1 and edge["count"].iloc[8] == 1


def test_brier_score_is_the_squared_distance_to_the_one_hot_gold() -> None:
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(3), size=40)
    gold = rng.integers(0, 3, 40)
    expected = ((probabilities - np.eye(3)[gold]) ** 2).sum(axis=1).mean()
    assert analysis.brier_score(gold, probabilities) == pytest.approx(expected)
    assert analysis.brier_score([0], np.array([[1.0, 0, 0]])) == 0.0
    assert analysis.brier_score([0], np.array([[0, 1.0, 0]])) == 2.0


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model_and_keeps_its_labels() -> None:
    logits, gold = overconfident_logits()
    fit = analysis.fit_temperature(logits, gold)
    assert 3.0 < fit.temperature < 5.5  # the scale the logits were blown up by (4), recovered from data
    assert fit.loss_after < fit.loss_before
    raw, calibrated = analysis.scaled_probabilities(logits), analysis.scaled_probabilities(logits, fit.temperature)
    assert np.array_equal(raw.argmax(axis=1), calibrated.argmax(axis=1))
    before = analysis.expected_calibration_error(gold, raw)
    after = analysis.expected_calibration_error(gold, calibrated)
    assert before > 0.1 and after < before / 3


def test_temperature_below_one_sharpens_an_underconfident_model() -> None:
    logits, gold = overconfident_logits(scale=0.25)
    assert analysis.fit_temperature(logits, gold).temperature < 0.5


def test_reliability_figure_draws_the_bins_with_their_counts() -> None:
    logits, gold = overconfident_logits(rows=200)
    probabilities = analysis.scaled_probabilities(logits)
    figure = plots.reliability(analysis.reliability(gold, probabilities), 0.123)
    top, bottom = figure.axes
    assert "ECE 0.123" in top.get_title()
    shown = [text.get_text() for text in bottom.texts]
    assert sum(int(t) for t in shown if t) == 200


@pytest.mark.slow
def test_analysis_and_plots_do_not_import_mlflow() -> None:
    code = "import sys, emotion_exp.analysis, emotion_exp.plots; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_pandas_reads_back_the_table_it_writes(tmp_path) -> None:
    table = analysis.per_text(["é | x"], [0], np.array([[0.2, 0.5, 0.3]]), LABELS)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table)
