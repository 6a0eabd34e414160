"""The learning curve: nested stratified subsets, one nested run per point, the curve on the parent."""

from __future__ import annotations

import itertools
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, subsets
from emotion_exp.catalog import LearningCurveConfig
from emotion_exp.errors import UserError
from emotion_exp.workflows import learning_curve


def sample_labels() -> np.ndarray:
    labels = pd.read_csv(Path(subsets.__file__).with_name("sample") / "train.csv")["label"]
    return labels.astype("category").cat.codes.to_numpy()


def test_subsets_are_nested_stratified_seeded_and_hold_every_label() -> None:
    labels = sample_labels()
    fractions = [0.001, 0.01, 0.1, 0.5, 1.0]
    rows = subsets.nested_stratified_subsets(labels, fractions, seed=7)

    assert [len(r) for r in rows] == [12, 17, 166, 832, len(labels)]  # 12: two of each of the six labels
    for smaller, larger in itertools.pairwise(rows):
        assert set(smaller) < set(larger)
    shares = np.bincount(labels) / len(labels)
    for subset in rows:
        counts = np.bincount(labels[subset], minlength=6)
        assert (counts >= 2).all()
        if len(subset) >= 100:  # in proportion, give or take a row per label
            assert np.abs(counts - shares * len(subset)).max() <= 1.5
    assert all(np.array_equal(a, b) for a, b in zip(rows, subsets.nested_stratified_subsets(labels, fractions, 7)))
    assert not np.array_equal(rows[2], subsets.nested_stratified_subsets(labels, fractions, 8)[2])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fractions": "0.5,1.5"}, "--fractions must be distinct shares"),
        ({"fractions": "0,1"}, "--fractions must be distinct shares"),
        ({"fractions": "half"}, "--fractions must be numbers"),
        ({"fractions": ","}, "--fractions needs a comma-separated list"),
        ({"stages": "tfidf,dummy"}, "--stages must name distinct stages among "),
        ({"stages": "tfidf,tfidf"}, "--stages must name distinct stages among "),
    ],
)
def test_bad_fractions_and_stages_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        LearningCurveConfig(**options)


def test_the_curve_trains_the_registrys_stages_and_none_other() -> None:
    curve = catalog.on_the_learning_curve()
    assert LearningCurveConfig().stage_list == list(curve)  # '' = all of them, in registry order
    assert LearningCurveConfig(stages=",".join(reversed(curve))).stage_list == list(reversed(curve))
    for name, spec in catalog.STAGES.items():
        if not spec.learning_curve:
            with pytest.raises(UserError, match=f"among {', '.join(curve)}; got '{name}'"):
                LearningCurveConfig(stages=name)


def test_fractions_that_give_the_same_training_texts_are_merged_saying_so() -> None:
    labels = sample_labels()
    smallest = subsets.subset_sizes(labels, [0.0])[0]  # the rows that hold every label twice
    fractions, notes = subsets.distinct_fractions(labels, [0.001, 0.002, 0.003, 0.5])

    assert fractions == [0.001, 0.5]
    assert notes == [
        f"--fractions {f:g} gives the same {smallest} training texts as 0.001 (rounded, and at least 2 of every "
        "label): trained once, as 0.001."
        for f in (0.002, 0.003)
    ]
    assert subsets.distinct_fractions(labels, [0.25, 1.0]) == ([0.25, 1.0], [])


@pytest.mark.slow
def test_a_curve_trains_every_stage_at_every_fraction_as_nested_runs(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str
) -> None:
    config = LearningCurveConfig(
        dataset=str(small_dataset),
        model=str(tiny_model_dir),
        fractions="1.0,0.25",  # and every stage the curve can train (the default)
        epochs=1,
        batch_size=16,
        umap_max_points=50,
    )
    parent_id = learning_curve.run(config)

    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")
    points = [run for run in runs if "curve_point" in run.data.tags]
    by_stage = {
        stage: sorted((int(r.data.params["train_size"]), r) for r in points if r.data.tags["stage"] == stage)
        for stage in catalog.on_the_learning_curve()
    }
    for stage, sized in by_stage.items():
        assert [size for size, _ in sized] == [30, 120], stage
        for size, run in sized:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["train_rows"] == size and run.data.metrics["val_rows"] == 40
            assert {"val_accuracy", "test_accuracy"} <= set(run.data.metrics)
            assert "registered_version" not in run.data.tags
    # Extraction once, reused by every feature head's point.
    assert len([run for run in runs if run.data.tags["stage"] == "extract"]) == 1
    [extract_run] = [run for run in runs if run.data.tags["stage"] == "extract"]
    heads = [stage for stage in by_stage if catalog.STAGES[stage].reads_features]
    assert heads and {r.data.tags["features_run_id"] for stage in heads for _, r in by_stage[stage]} == {
        extract_run.data.tags["features_run_id"]
    }

    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "learning-curve"
    assert 0 < parent.data.metrics["dummy_val_accuracy"] < 1
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent_id, "plots")}
    assert "plots/learning_curve.png" in artifacts
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="learning_curve/points.csv")
    )
    assert len(table) == 2 * len(by_stage) and set(table["train_size"]) == {30, 120}
    for row in table.itertuples():  # each point's band: the interval its run logged
        logged = mlflow.get_run(row.run_id).data.metrics
        assert (row.val_accuracy_ci_low, row.val_accuracy_ci_high) == pytest.approx(  # the CSV's parse: to an ulp
            (logged["val_accuracy_ci_low"], logged["val_accuracy_ci_high"]), rel=1e-12
        )
        assert row.val_accuracy_ci_low <= row.val_accuracy <= row.val_accuracy_ci_high
    history = MlflowClient().get_metric_history(parent_id, "tfidf_val_accuracy")
    assert sorted(m.step for m in history) == [30, 120]
