"""What several test modules share: a run's artifacts, `mlflow run` in a subprocess, a model's own scores,
the tiny fine-tune."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, f1_score

from emotion_exp.config import FinetuneConfig
from emotion_exp.data import DatasetSplits
from tests.conftest import REPO_ROOT

LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
"""The study's six labels, in id order: the bundled sample's and every test dataset's."""


def artifacts(run_id: str, path: str = "") -> set[str]:
    """Every artifact file of a run under ``path``, folders walked."""
    found = set()
    for item in MlflowClient().list_artifacts(run_id, path):
        found |= artifacts(run_id, item.path) if item.is_dir else {item.path}
    return found


def mlflow_run_command(entry_point: str, experiment: str, tracking_uri: str, *params: str) -> tuple[list[str], dict]:
    """The command line and environment of `mlflow run . -e <entry_point> --env-manager local`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    # The launcher takes the experiment from its flag; the test's own env would contradict it.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO_ROOT),
        "-e",
        entry_point,
        "--env-manager",
        "local",
        "--experiment-name",
        experiment,
    ]
    for param in params:
        command += ["-P", param]
    return command, env


def mlflow_run(
    entry_point: str, experiment: str, tracking_uri: str, *params: str, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run an entry point with `mlflow run . --env-manager local` in a subprocess."""
    command, env = mlflow_run_command(entry_point, experiment, tracking_uri, *params)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def scores_of_the_model(model_uri: str, splits: DatasetSplits, split: str) -> dict[str, float]:
    """A split's scores computed from what the logged model predicts, apart from the stage's own scoring."""
    frame = splits.split(split)
    predicted = mlflow.pyfunc.load_model(model_uri).predict(frame[["text"]])["label"].tolist()
    truth = [splits.label_names[label] for label in frame["label"]]
    labels = list(splits.label_names)
    prefix = {"validation": "val", "test": "test"}[split]
    return {
        f"{prefix}_accuracy": accuracy_score(truth, predicted),
        f"{prefix}_f1_weighted": f1_score(truth, predicted, labels=labels, average="weighted", zero_division=0),
        f"{prefix}_f1_macro": f1_score(truth, predicted, labels=labels, average="macro", zero_division=0),
    }


def tiny_finetune_config(dataset: Path, model: Path, workdir: Path, **settings: object) -> FinetuneConfig:
    """One quick epoch of the tiny model on small data, checkpoints under ``workdir``; ``settings`` override."""
    return FinetuneConfig(
        **{
            "dataset": str(dataset),
            "model": str(model),
            "epochs": 1,
            "max_length": 32,
            "batch_size": 16,
            "umap_max_points": 100,
            "output_dir": str(workdir / "checkpoints"),
            **settings,
        }
    )


ANALYSIS_ARTIFACTS = {
    "analysis/validation_predictions.parquet",
    "analysis/hardest_validation.md",
    "analysis/confusions.md",
    "plots/reliability_validation.png",
}


def assert_analysis_logged(run_id: str, split: str = "validation", prefixes: tuple[str, ...] = ("val", "test")) -> None:
    """What every model stage logs for its error analysis and calibration (used by each stage's test)."""
    run = mlflow.get_run(run_id)
    for prefix in prefixes:
        assert run.data.metrics[f"{prefix}_loss"] > 0
        assert 0 <= run.data.metrics[f"{prefix}_ece"] <= 1
        assert 0 <= run.data.metrics[f"{prefix}_brier"] <= 2
    client = mlflow.MlflowClient()
    found = {a.path for folder in ("analysis", "plots") for a in client.list_artifacts(run_id, folder)}
    expected = {name.replace("validation", split) for name in ANALYSIS_ARTIFACTS}
    assert expected <= found
    table = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"analysis/{split}_predictions.parquet")
    )
    assert list(table.columns) == [
        "text",
        "gold",
        "predicted",
        "predicted_probability",
        "gold_probability",
        "loss",
        "correct",
    ]
    assert table["loss"].mean() == pytest.approx(run.data.metrics[f"{prefixes[0]}_loss"])
    assert table["correct"].mean() == pytest.approx(run.data.metrics[f"{prefixes[0]}_accuracy"])
    hardest = mlflow.artifacts.load_text(f"runs:/{run_id}/analysis/hardest_{split}.md")
    assert hardest.count("\n| ") == 1 + min(30, len(table))  # the header row and the texts
