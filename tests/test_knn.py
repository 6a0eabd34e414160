"""The knn stage (a feature head): its scores are the vote of the nearest training texts, its bad input refused."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from emotion_exp import data, features, registry, significance
from emotion_exp.config import DataConfig, KnnConfig, subset
from emotion_exp.errors import UserError
from emotion_exp.stages import extract, knn
from tests.helpers import scores_of_the_model


def _config(small_dataset: Path, tiny_model_dir: Path, **overrides: object) -> KnnConfig:
    values = {"dataset": str(small_dataset), "model": str(tiny_model_dir), "precision": "fp32", "umap_max_points": 100}
    return KnnConfig(**{**values, **overrides})


def nearest_vote(train: np.ndarray, labels: np.ndarray, points: np.ndarray, k: int, weights: str) -> np.ndarray:
    """The label each point's k nearest training points (Euclidean) vote for, by hand; ties go to the lower id."""
    distances = np.sqrt(((points[:, None, :].astype(float) - train[None, :, :]) ** 2).sum(axis=2))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(points), labels.max() + 1))
    for row, neighbours in enumerate(nearest):
        near = distances[row, neighbours]
        if weights == "uniform":
            strength = np.ones(k)
        elif (near == 0).any():  # a training point on the spot: it alone decides (as scikit-learn does)
            strength = (near == 0).astype(float)
        else:
            strength = 1 / near
        np.add.at(votes[row], labels[neighbours], strength)
    return votes.argmax(axis=1)


@pytest.mark.parametrize(("k", "weights"), [(3, "uniform"), (7, "distance")])
@pytest.mark.slow  # whole stages logged and read back: seconds
def test_knn_predicts_the_vote_of_the_nearest_training_texts(
    small_dataset: Path, tiny_model_dir: Path, extract_run: str, k: int, weights: str
) -> None:
    run_id = knn.run(
        _config(small_dataset, tiny_model_dir, n_neighbors=k, weights=weights, features_run_id=extract_run)
    )

    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "knn"
    assert run.data.tags["features_run_id"] == extract_run
    feature_set = features.load(
        Path(mlflow.artifacts.download_artifacts(run_id=extract_run, artifact_path=extract.FEATURES_ARTIFACT))
    )
    per_text = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=significance.PREDICTIONS_ARTIFACT)
    )
    splits = data.load_splits(subset(_config(small_dataset, tiny_model_dir), DataConfig))
    for split, prefix in (("validation", "val"), ("test", "test")):
        expected = nearest_vote(
            feature_set.features["train"], feature_set.labels["train"], feature_set.features[split], k, weights
        )
        logged = per_text[per_text["split"] == split].sort_values("row")
        np.testing.assert_array_equal(logged["predicted"].to_numpy(), np.asarray(splits.label_names)[expected])
        gold = splits.split(split)["label"].to_numpy()
        assert run.data.metrics[f"{prefix}_accuracy"] == pytest.approx((expected == gold).mean())
    if weights == "uniform":  # the logged text -> label model: the encoder, then the same vote
        model_uri = registry.model_of_run(run_id)
        assert model_uri is not None
        scored = scores_of_the_model(model_uri, splits, "validation")
        assert scored["val_accuracy"] == pytest.approx(run.data.metrics["val_accuracy"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_neighbors": 0}, "--n_neighbors must be at least 1; got 0."),
        ({"n_neighbors": 2.5}, "--n_neighbors must be a whole number; got 2.5."),
        ({"n_neighbors": "5"}, "--n_neighbors must be a whole number; got '5'."),
        ({"weights": "closest"}, "--weights must be one of uniform, distance; got 'closest'."),
    ],
)
def test_bad_knn_options_are_refused_before_any_work(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(UserError) as refused:
        KnnConfig(**overrides)
    assert str(refused.value) == message


def test_more_neighbours_than_training_texts_fail_the_run_with_the_reason(
    small_dataset: Path, tiny_model_dir: Path, extract_run: str, isolated_mlflow: str
) -> None:
    with pytest.raises(UserError, match="--n_neighbors 500 is more than the 120 training texts it fits on"):
        knn.run(_config(small_dataset, tiny_model_dir, n_neighbors=500, features_run_id=extract_run))
    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.info.status == "FAILED" and "--n_neighbors 500" in run.data.tags["error"]
