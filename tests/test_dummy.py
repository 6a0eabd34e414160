"""The dummy stage end to end through the CLI, read back from the MLflow store."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner

from emotion_exp import baselines, data
from emotion_exp.cli import cli
from emotion_exp.config import DataConfig
from tests.helpers import artifacts, assert_analysis_logged

EXPECTED_ARTIFACTS = {
    "plots/label_distribution.png",
    "plots/confusion_matrix_validation.png",
    "plots/confusion_matrix_test.png",
    "reports/classification_report_validation.json",
    "reports/classification_report_test.json",
}


def test_dummy_logs_scores_plots_report_and_dataset(isolated_mlflow: str) -> None:
    result = CliRunner().invoke(cli, ["dummy"])
    assert result.exit_code == 0, result.output

    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "dummy"
    assert len(run.data.tags["dataset_digest"]) == 64
    assert run.data.params["strategy"] == "most_frequent"
    # The bundled sample's validation split: joy is the most frequent label.
    assert run.data.metrics["val_accuracy"] == pytest.approx(67 / 200)
    for name in ("val_f1_weighted", "val_f1_macro", "test_accuracy", "test_f1_weighted"):
        assert 0 < run.data.metrics[name] < 1
    assert EXPECTED_ARTIFACTS <= artifacts(run.info.run_id)
    assert_analysis_logged(run.info.run_id)

    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/reports/classification_report_validation.json")
    assert set(report) >= {"sadness", "joy", "love", "anger", "fear", "surprise", "accuracy"}

    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert contexts == ["test", "train", "validation"]
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        "emotion-sample-train",
        "emotion-sample-validation",
        "emotion-sample-test",
    }


def test_a_bad_dataset_fails_the_run_with_the_reason_and_no_traceback(isolated_mlflow: str) -> None:
    result = CliRunner().invoke(cli, ["dummy", "--dataset", "no/such/file.csv"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "no/such/file.csv" in result.output
    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.info.status == "FAILED"
    assert "no/such/file.csv" in run.data.tags["error"]


def test_majority_class_on_the_sample_predicts_joy() -> None:
    splits = data.load_splits(DataConfig())
    assert splits.train["label"].map(dict(enumerate(splits.label_names))).value_counts().idxmax() == "joy"

    model = baselines.fit_dummy(splits.train["label"].to_numpy())

    predicted = model.predict(splits.validation[["text"]])
    assert {splits.label_names[i] for i in predicted} == {"joy"} and len(predicted) == len(splits.validation)
