"""evaluate: a registered model scored on a folder's split, a whole file, other label names and a subset of labels."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import data
from emotion_exp.cli import cli
from emotion_exp.config import EvaluateConfig
from emotion_exp.errors import UserError
from emotion_exp.stages import evaluate
from tests.helpers import LABELS, assert_analysis_logged


@pytest.fixture
def registered(registered_tfidf: tuple[str, str]) -> tuple[str, str]:
    """The session's registered TF-IDF model of the small data; (name, its run id)."""
    return registered_tfidf


def evaluate_runs(experiment: str) -> list[mlflow.entities.Run]:
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return [r for r in runs if r.data.tags.get("stage") == "evaluate"]


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_registered_model_on_a_folder_split_logs_what_training_logged(
    registered: tuple[str, str], small_dataset: Path, isolated_mlflow: str
) -> None:
    name, trained_id = registered
    result = CliRunner().invoke(
        cli, ["evaluate", "--model_uri", f"models:/{name}/1", "--dataset", str(small_dataset), "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert f"(version 1 of {name})" in result.output

    [run] = evaluate_runs(isolated_mlflow)
    trained = mlflow.get_run(trained_id).data.metrics
    # The same model on the same test split through mlflow.pyfunc: the training run's test scores.
    for metric in ("test_accuracy", "test_f1_weighted", "test_f1_macro", "test_loss", "test_ece", "test_brier"):
        assert run.data.metrics[metric] == pytest.approx(trained[metric], abs=1e-9)
    assert run.data.metrics["test_rows"] == 40
    assert run.data.tags["model_uri"] == f"models:/{name}/1"
    assert (run.data.tags["registered_model"], run.data.tags["registered_version"]) == (name, "1")
    assert_analysis_logged(run.info.run_id, split="test", prefixes=("test",))
    found = {a.path for folder in ("plots", "reports") for a in MlflowClient().list_artifacts(run.info.run_id, folder)}
    assert {"plots/confusion_matrix_test.png", "reports/classification_report_test.json"} <= found
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.tags[0].value == "test"

    # MLflow's evaluation of the model: its scores and ours (intervals, calibration) linked to the model and data.
    assert run.data.metrics["test_accuracy_score"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert run.data.metrics["test_f1_score"] == pytest.approx(run.data.metrics["test_f1_weighted"])
    assert {"test_precision_score", "test_recall_score"} <= set(run.data.metrics)
    assert {"test_confusion_matrix.png", "per_class_metrics.csv"} <= {
        a.path for a in MlflowClient().list_artifacts(run.info.run_id)
    }
    model_id = mlflow.models.get_model_info(f"models:/{name}/1").model_id
    linked = {m.key: m for m in mlflow.get_logged_model(model_id).metrics if m.run_id == run.info.run_id}
    assert {"test_accuracy_score", "test_f1_score", "test_accuracy", "test_accuracy_ci_low", "test_ece"} <= set(linked)
    assert linked["test_accuracy"].dataset_name == dataset_input.dataset.name

    labelled = data.load_labelled(str(small_dataset), "test")
    version = MlflowClient().get_model_version(name, "1")
    key = f"evaluated_on_{labelled.digest[:12]}"
    assert run.data.tags["dataset_digest"] == labelled.digest
    for metric in ("accuracy", "f1_weighted"):  # the score with its interval, as the run logged them
        logged = [run.data.metrics[f"test_{metric}{suffix}"] for suffix in ("", "_ci_low", "_ci_high")]
        assert version.tags[f"{key}_{metric}"] == "{:.3f} [{:.3f}, {:.3f}]".format(*logged)


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_single_file_is_scored_whole_and_a_run_uri_resolves_to_its_version(
    registered: tuple[str, str], small_dataset: Path, tmp_path: Path, isolated_mlflow: str
) -> None:
    name, trained_id = registered
    frame = pd.concat([pd.read_csv(small_dataset / f"{s}.csv") for s in ("validation", "test")])
    frame.rename(columns={"text": "sentence", "label": "emotion"}).to_csv(tmp_path / "new.csv", index=False)

    evaluate.run(
        EvaluateConfig(
            model_uri=f"runs:/{trained_id}/tfidf",
            dataset=str(tmp_path / "new.csv"),
            text_column="sentence",
            label_column="emotion",
        )
    )

    [run] = evaluate_runs(isolated_mlflow)
    assert run.data.metrics["test_rows"] == len(frame) == 80
    assert run.data.tags["whole_file"] == "True"
    assert (run.data.tags["registered_model"], run.data.tags["registered_version"]) == (name, "1")


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_unknown_labels_are_named_and_a_label_map_fixes_them(
    registered: tuple[str, str], small_dataset: Path, tmp_path: Path, isolated_mlflow: str
) -> None:
    name, _ = registered
    frame = pd.read_csv(small_dataset / "test.csv")
    frame["label"] = frame["label"].replace({"joy": "happiness", "anger": "rage"})
    frame.to_csv(tmp_path / "renamed.csv", index=False)

    result = CliRunner().invoke(
        cli, ["evaluate", "--model_uri", f"models:/{name}/1", "--dataset", str(tmp_path / "renamed.csv")]
    )
    assert result.exit_code != 0
    assert (
        "does not know: 'happiness'" in result.output and "'rage'" in result.output and "--label_map" in result.output
    )
    assert evaluate_runs(isolated_mlflow) == []  # refused before any run

    mapped = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model_uri",
            f"models:/{name}/1",
            "--dataset",
            str(tmp_path / "renamed.csv"),
            "--label_map",
            "happiness=joy, rage=anger",
        ],
    )
    assert mapped.exit_code == 0, mapped.output
    [run] = evaluate_runs(isolated_mlflow)
    original = evaluate.run(EvaluateConfig(model_uri=f"models:/{name}/1", dataset=str(small_dataset / "test.csv")))
    assert run.data.metrics["test_accuracy"] == mlflow.get_run(original).data.metrics["test_accuracy"]


def test_a_subset_of_the_labels_works_and_says_so(
    registered: tuple[str, str], small_dataset: Path, tmp_path: Path, isolated_mlflow: str, capsys
) -> None:
    name, _ = registered
    frame = pd.read_csv(small_dataset / "test.csv")
    frame[frame["label"].isin(["joy", "sadness"])].to_csv(tmp_path / "two.csv", index=False)

    evaluate.run(EvaluateConfig(model_uri=f"models:/{name}/1", dataset=str(tmp_path / "two.csv")))

    assert "holds 2 of the model's 6 labels (none of: love, anger, fear, surprise)" in capsys.readouterr().out
    [run] = evaluate_runs(isolated_mlflow)
    assert run.info.status == "FINISHED"
    assert run.data.tags["labels_missing"] == "love,anger,fear,surprise"


def test_labels_match_by_name_by_id_and_through_the_map() -> None:
    labels = pd.Series(["joy", 0, "happy", 5])
    ids, missing = evaluate.match_labels(labels, LABELS, {"happy": "joy"}, "m")
    assert ids.tolist() == [1, 0, 1, 5]
    assert missing == ["love", "anger", "fear"]
    with pytest.raises(UserError, match=r"does not know: '6' \(1 rows\), 'glee' \(1 rows\)"):
        evaluate.match_labels(pd.Series([6, "glee", "joy"]), LABELS, {}, "m")


@pytest.mark.parametrize("label_map", ["joy", "=joy", "happy=", "a=b,c"])
def test_a_malformed_label_map_is_refused(label_map: str) -> None:
    with pytest.raises(UserError, match="old=new pairs"):
        EvaluateConfig(label_map=label_map)


def test_a_model_uri_that_does_not_exist_is_a_clear_error(isolated_mlflow: str) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--model_uri", "models:/no-such-model@champion"])
    assert result.exit_code != 0
    assert "no registered model named 'no-such-model'" in result.output


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_two_evaluations_of_the_same_data_are_compared_text_by_text(
    registered: tuple[str, str], small_dataset: Path
) -> None:
    """How to check what a runtime changes (onnx-int8 against onnx): evaluate under each, then compare."""
    name, trained_id = registered
    evaluated = [
        evaluate.run(EvaluateConfig(model_uri=uri, dataset=str(small_dataset), split="test"))
        for uri in (f"models:/{name}/1", f"runs:/{trained_id}/tfidf")
    ]

    result = CliRunner().invoke(cli, ["compare", *evaluated])

    assert result.exit_code == 0, result.output
    [run] = [r for r in mlflow.search_runs(output_format="list") if r.data.tags["stage"] == "compare"]
    trained = mlflow.get_run(trained_id).data.metrics  # one model twice: no text differs
    assert run.data.metrics["test_accuracy_a"] == run.data.metrics["test_accuracy_b"] == trained["test_accuracy"]
    assert (run.data.metrics["test_only_a_right"], run.data.metrics["test_only_b_right"]) == (0, 0)
    assert "neither run is shown to be better" in result.output
