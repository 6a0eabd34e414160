"""The probe stage with the tiny encoder: feature reuse, features_run_id checks, the pyfunc model."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from emotion_exp import baselines, data
from emotion_exp.config import DataConfig, ExtractConfig, ProbeConfig, subset
from emotion_exp.errors import UserError
from emotion_exp.stages import extract, probe
from tests.helpers import LABELS, assert_analysis_logged, scores_of_the_model


def _config(small_dataset: Path, tiny_model_dir: Path, **overrides: object) -> ProbeConfig:
    values = {"dataset": str(small_dataset), "model": str(tiny_model_dir), "precision": "fp32", "umap_max_points": 100}
    return ProbeConfig(**{**values, **overrides})


def _runs(experiment: str, stage: str) -> list[mlflow.entities.Run]:
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return [r for r in runs if r.data.tags.get("stage") == stage]


@pytest.mark.slow
def test_probe_extracts_in_a_nested_run_then_reuses_the_features_and_logs_a_text_model(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str
) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    first_id = probe.run(_config(small_dataset, tiny_model_dir, registered_model=name))

    [extract_run] = _runs(isolated_mlflow, "extract")
    assert extract_run.data.tags["mlflow.parentRunId"] == first_id
    first = mlflow.get_run(first_id)
    assert first.info.status == "FINISHED"
    assert first.data.tags["features_run_id"] == extract_run.info.run_id
    splits = data.load_splits(subset(_config(small_dataset, tiny_model_dir), DataConfig))
    expected = {
        **scores_of_the_model(f"models:/{name}/1", splits, "validation"),
        **scores_of_the_model(f"models:/{name}/1", splits, "test"),
    }
    assert {m: first.data.metrics[m] for m in expected} == pytest.approx(expected)
    assert first.data.tags["registered_version"] == "1"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first_id, "plots")}
    assert {
        "plots/confusion_matrix_validation.png",
        "plots/confusion_matrix_test.png",
        "plots/label_distribution.png",
    } <= artifacts
    assert_analysis_logged(first_id)

    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    texts = ["i feel so happy today", "im scared of what comes next", "ok"]
    from_frame = model.predict(pd.DataFrame({"text": texts}))
    from_list = model.predict(texts)
    assert list(from_frame.columns) == ["label", *(f"prob_{n}" for n in LABELS)]
    pd.testing.assert_frame_equal(from_frame, from_list)
    assert set(from_frame["label"]) <= set(LABELS)
    np.testing.assert_allclose(from_frame.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-6)
    # no input schema, so MLflow hands the model a table whole and a list of lists as rows (test_pyfunc_input.py)
    assert model.metadata.get_input_schema() is None
    assert len(model.predict(pd.DataFrame({"text": []}, dtype=str))) == 0

    second_id = probe.run(_config(small_dataset, tiny_model_dir, C=0.5))
    assert len(_runs(isolated_mlflow, "extract")) == 1, "the second probe must reuse the finished extract run"
    assert mlflow.get_run(second_id).data.tags["features_run_id"] == extract_run.info.run_id


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_an_explicit_features_run_id_is_used(small_dataset: Path, tiny_model_dir: Path, extract_run: str) -> None:
    probe_id = probe.run(_config(small_dataset, tiny_model_dir, max_iter=1, features_run_id=extract_run))
    run = mlflow.get_run(probe_id)
    assert run.data.tags["features_run_id"] == extract_run
    assert "did not converge in 1 iterations" in run.data.tags["warning"]
    assert "mlflow.parentRunId" not in mlflow.get_run(extract_run).data.tags
    assert not [r for r in mlflow.search_runs(output_format="list") if r.data.tags.get("stage") == "extract"]


def test_a_features_run_id_that_does_not_exist_fails_with_the_reason(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str
) -> None:
    with pytest.raises(UserError, match="--features_run_id 0123abcd: there is no such run in the tracking store"):
        probe.run(_config(small_dataset, tiny_model_dir, features_run_id="0123abcd"))
    [run] = _runs(isolated_mlflow, "probe")
    assert run.info.status == "FAILED"


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_features_run_id_of_another_dataset_or_key_or_stage_is_refused(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str, extract_run: str
) -> None:
    other_data = extract.run(
        ExtractConfig(model=str(tiny_model_dir), precision="fp32", umap_max_points=100, max_samples=60)
    )
    with pytest.raises(UserError, match=r"holds features of another dataset \(emotion-sample, digest"):
        probe.run(_config(small_dataset, tiny_model_dir, features_run_id=other_data))

    with pytest.raises(UserError, match=r"made its features with pooling=cls \(not mean\); pass the same values"):
        probe.run(_config(small_dataset, tiny_model_dir, pooling="mean", features_run_id=extract_run))

    probe_run = _runs(isolated_mlflow, "probe")[0].info.run_id
    with pytest.raises(UserError, match=r"is a FAILED 'probe' run, not a finished extract run"):
        probe.run(_config(small_dataset, tiny_model_dir, features_run_id=probe_run))


def test_fit_probe_converges_and_gives_a_probability_per_label() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    points = rng.normal(size=(60, 8)) + labels[:, None] * 3.0
    pipeline = baselines.fit_probe(points, labels, max_iter=500)
    assert baselines.converged(pipeline[-1], 500)
    assert (pipeline.predict(points) == labels).mean() > 0.95
    probabilities = baselines.predict_proba(pipeline, points[:2], n_labels=5)
    assert probabilities.shape == (2, 5) and np.allclose(probabilities[:, 3:], 0)


def test_probabilities_of_a_probe_on_float32_features_pass_the_brier_score_as_probabilities() -> None:
    """Widened to float64, float32 probabilities sum to one only to float32 precision: sklearn warned on each split."""
    import warnings

    from emotion_exp import analysis

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 30)
    points = (rng.normal(size=(180, 32)) + labels[:, None]).astype(np.float32)
    probabilities = baselines.predict_proba(baselines.fit_probe(points, labels, max_iter=50), points, n_labels=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        score = analysis.brier_score(labels, probabilities)
    assert score == pytest.approx(((probabilities - np.eye(6)[labels]) ** 2).sum(axis=1).mean(), rel=1e-5)


@pytest.mark.slow
def test_the_probe_on_the_packaged_encoder_clearly_beats_the_dummy() -> None:
    """The real encoder on the bundled sample: validation accuracy far above the majority class."""
    from emotion_exp import data, features, models
    from emotion_exp.config import DEFAULT_MODEL, DataConfig

    splits = data.load_splits(DataConfig())
    encoder = features.load_encoder(models.resolve(DEFAULT_MODEL), models.resolve_precision("auto"))
    train, validation = (
        features.extract(splits.split(n)["text"].tolist(), encoder, pooling="mean", progress=False).features
        for n in ("train", "validation")
    )
    labels = splits.validation["label"].to_numpy()
    pipeline = baselines.fit_probe(train, splits.train["label"].to_numpy())
    dummy = baselines.fit_dummy(splits.train["label"].to_numpy())
    probe_accuracy = (pipeline.predict(validation) == labels).mean()
    dummy_accuracy = (dummy.predict(validation) == labels).mean()
    assert dummy_accuracy == pytest.approx(67 / 200)
    assert probe_accuracy > dummy_accuracy + 0.3
