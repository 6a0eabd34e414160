"""The interval and test formulas, each checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from emotion_exp import significance

Z95 = 1.959964


def normal_half_width(p: float, n: int) -> float:
    return Z95 * math.sqrt(p * (1 - p) / n)


def test_accuracy_interval_matches_the_normal_approximation_on_a_large_sample() -> None:
    rng = np.random.default_rng(1)
    n = 20_000  # above BCA_MAX_TEXTS: the percentile method; the 2,000-text test checks BCa
    gold = rng.integers(0, 6, n)
    right = rng.random(n) < 0.93
    predicted = np.where(right, gold, (gold + 1) % 6)
    interval = significance.score_interval(gold, predicted, 6, "accuracy", resamples=2000)

    accuracy = right.mean()
    half = normal_half_width(accuracy, n)
    assert interval.estimate == pytest.approx(accuracy)
    assert interval.low == pytest.approx(accuracy - half, abs=0.1 * half)
    assert interval.high == pytest.approx(accuracy + half, abs=0.1 * half)


def test_a_2000_text_split_near_093_has_an_interval_of_about_one_point_each_side() -> None:
    # The figure the README quotes: 0.93 on 2,000 texts is 0.93 +- 1.1 points.
    gold = np.zeros(2000, dtype=int)
    predicted = np.r_[np.zeros(1860, dtype=int), np.ones(140, dtype=int)]
    interval = significance.score_interval(gold, predicted, 6)
    assert interval.high - interval.low == pytest.approx(2 * normal_half_width(0.93, 2000), rel=0.1)
    assert normal_half_width(0.93, 2000) == pytest.approx(0.0112, abs=0.0002)


@pytest.mark.parametrize("average", ["weighted", "macro"])
def test_the_vectorised_f1_is_scikit_learns(average: str) -> None:
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 5, (7, 300))  # 7 resamples at once; label 5 never occurs
    predicted = np.where(rng.random((7, 300)) < 0.6, gold, rng.integers(0, 6, (7, 300)))
    vectorised = significance.metric_function(f"f1_{average}", 6)(gold, predicted, axis=-1)
    expected = [
        f1_score(g, p, labels=np.arange(6), average=average, zero_division=0)
        for g, p in zip(gold, predicted, strict=True)
    ]
    np.testing.assert_allclose(vectorised, expected, rtol=1e-12)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_texts() -> None:
    # 1 text only A gets right, 9 only B: two-sided exact p = 2 * (C(10,0) + C(10,1)) / 2**10.
    gold = np.zeros(30, dtype=int)
    a = np.r_[np.zeros(20), [0], np.ones(9)].astype(int)  # right on 20 shared + 1 of its own
    b = np.r_[np.zeros(20), [1], np.zeros(9)].astype(int)  # right on 20 shared + 9 of its own
    test = significance.mcnemar(gold, a, b)
    assert (test.only_a, test.only_b) == (1, 9)
    assert test.pvalue == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10)  # 0.0215


def test_mcnemar_of_two_identical_models_is_one() -> None:
    gold = np.arange(10) % 3
    assert significance.mcnemar(gold, gold, gold).pvalue == 1.0


def test_paired_difference_matches_the_normal_approximation_for_paired_proportions() -> None:
    rng = np.random.default_rng(3)
    n = 20_000  # above BCA_MAX_TEXTS: the percentile method; the 2,000-text test checks BCa
    gold = rng.integers(0, 6, n)
    a_right = rng.random(n) < 0.90
    # B agrees with A on most texts: pairing makes the difference's interval far narrower than either score's.
    b_right = np.where(rng.random(n) < 0.9, a_right, rng.random(n) < 0.92)
    a = np.where(a_right, gold, (gold + 1) % 6)
    b = np.where(b_right, gold, (gold + 2) % 6)
    interval = significance.paired_difference(gold, a, b, 6)

    only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    difference = (only_a - only_b) / n
    se = math.sqrt(only_a + only_b - (only_a - only_b) ** 2 / n) / n
    assert interval.estimate == pytest.approx(difference)
    assert interval.low == pytest.approx(difference - Z95 * se, abs=0.1 * Z95 * se)
    assert interval.high == pytest.approx(difference + Z95 * se, abs=0.1 * Z95 * se)
    assert interval.high - interval.low < 0.5 * 2 * normal_half_width(0.9, n)


def test_every_text_right_gives_a_zero_width_interval_and_a_seed_repeats_itself() -> None:
    gold = np.arange(50) % 6
    assert significance.score_interval(gold, gold, 6) == significance.Interval(1.0, 1.0, 1.0)
    predicted = np.where(np.arange(50) % 7 == 0, (gold + 1) % 6, gold)
    assert significance.score_interval(gold, predicted, 6, seed=5) == significance.score_interval(
        gold, predicted, 6, seed=5
    )


def test_interval_metrics_are_named_as_the_stages_log_them() -> None:
    logged = significance.interval_metrics("val", {"accuracy": significance.Interval(0.9, 0.8, 0.95)})
    assert logged == {"val_accuracy_ci_low": 0.8, "val_accuracy_ci_high": 0.95}
    assert str(significance.Interval(0.9331, 0.9221, 0.9441)) == "0.933 [0.922, 0.944]"


def test_predictions_tables_of_two_runs_compare_text_by_text() -> None:
    names = ["sadness", "joy", "love"]
    gold = np.array([0, 1, 2, 1, 0, 2, 1, 1])
    one_hot = np.eye(3)
    a = significance.predictions_table("validation", gold, one_hot[gold], names)
    wrong = gold.copy()
    wrong[:3] = (wrong[:3] + 1) % 3
    b = significance.predictions_table("validation", gold, one_hot[wrong], names)
    assert significance.label_names_of(a) == names
    np.testing.assert_array_equal(significance.label_ids(b, "validation")[1], wrong)

    paired = significance.compare_predictions(a, b, "validation")
    assert paired.difference.estimate == pytest.approx(3 / 8)
    assert (paired.test.only_a, paired.test.only_b) == (3, 0)
    assert paired.test.pvalue == pytest.approx(2 / 2**3)
    assert str(paired).startswith("+0.375 [")


def test_runs_on_other_texts_are_refused() -> None:
    names = ["sadness", "joy"]
    a = significance.predictions_table("validation", np.array([0, 1, 1]), np.eye(2)[[0, 1, 1]], names)
    b = significance.predictions_table("validation", np.array([0, 1, 0]), np.eye(2)[[0, 1, 0]], names)
    with pytest.raises(ValueError, match="different validation texts"):
        significance.compare_predictions(a, b, "validation")
    with pytest.raises(ValueError, match="was not scored by both runs"):
        significance.compare_predictions(a, b, "test")
    other_labels = b.rename(columns={"prob_joy": "prob_love"})
    with pytest.raises(ValueError, match="different labels"):
        significance.compare_predictions(a, pd.DataFrame(other_labels), "validation")


def test_best_other_is_the_highest_scoring_other_stage() -> None:
    scores = {"dummy": 0.35, "probe": 0.63, "finetune": 0.93}
    assert significance.best_other(scores, "finetune") == "probe"
    assert significance.best_other(scores, "probe") == "finetune"
    assert significance.best_other({"dummy": 0.35}, "dummy") is None


def test_a_large_split_uses_the_percentile_method_and_stays_close_to_the_normal_interval() -> None:
    rng = np.random.default_rng(4)
    n = significance.BCA_MAX_TEXTS + 1
    gold = rng.integers(0, 6, n)
    right = rng.random(n) < 0.8
    interval = significance.score_interval(gold, np.where(right, gold, (gold + 1) % 6), 6, resamples=500)
    half = normal_half_width(right.mean(), n)
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.15)
