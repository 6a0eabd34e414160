"""Stages started at the same time on one sqlite store: nothing lost, the champion still the best.

The store exists before the processes start (the session fixture made it): two processes
racing on a brand-new store's schema set-up is MLflow's own limit, not ours. Everything after
that is ours: a new experiment both create, the dataset inputs both add, the registered model,
version and alias both write (``tracking.retry_on_conflict``, ``registry.register``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from emotion_exp import data
from emotion_exp.config import DataConfig, DummyConfig, TfidfConfig
from tests.helpers import artifacts
from tests.pyfunc_models import log_keyword_model

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:An input example was not provided")]
WAIT_S = 300

EVALUATION_ARTIFACTS = {
    "plots/label_distribution.png",
    "plots/confusion_matrix_validation.png",
    "plots/confusion_matrix_test.png",
    "reports/classification_report_validation.json",
    "reports/classification_report_test.json",
}
SCORES = {"val_accuracy", "val_f1_weighted", "val_f1_macro", "test_accuracy", "test_f1_weighted", "test_f1_macro"}


def start_together(commands: list[list[str]], folder: Path, **env: str) -> list[tuple[int, str]]:
    """Start every `emotion-exp` command at once (``env`` added); wait for all; return exit codes and output."""
    script = Path(sys.executable).with_name("emotion-exp")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "emotion_exp"]
    logs = [folder / f"process-{index}.log" for index in range(len(commands))]
    # mlflow.set_experiment (the fixture's) exports MLFLOW_EXPERIMENT_ID, which would contradict a new name.
    child_env = {**{k: v for k, v in os.environ.items() if not (env and k == "MLFLOW_EXPERIMENT_ID")}, **env}
    processes = []
    for command, log in zip(commands, logs):
        with log.open("w") as out:
            processes.append(subprocess.Popen([*prefix, *command], stdout=out, stderr=subprocess.STDOUT, env=child_env))
    results = []
    for process, log in zip(processes, logs):
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        results.append((process.returncode, log.read_text()))
    return results


def test_two_stages_at_once_in_a_new_experiment_both_log_everything(tmp_path: Path, small_dataset: Path) -> None:
    dataset = ["--dataset", str(small_dataset)]
    experiment = f"concurrent-{uuid.uuid4().hex[:8]}"

    results = start_together([["dummy", *dataset], ["tfidf", *dataset]], tmp_path, MLFLOW_EXPERIMENT_NAME=experiment)

    for code, output in results:
        assert code == 0, output[-3000:]
        assert "database is locked" not in output
    found = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    runs = {run.data.tags["stage"]: run for run in found}
    assert set(runs) == {"dummy", "tfidf"}
    for stage, config in (("dummy", DummyConfig), ("tfidf", TfidfConfig)):
        run = runs[stage]
        assert run.info.status == "FINISHED"
        assert set(config.__dataclass_fields__) <= set(run.data.params)
        assert SCORES <= set(run.data.metrics)
        assert len(run.inputs.dataset_inputs) == 3
        assert EVALUATION_ARTIFACTS <= artifacts(run.info.run_id)
    models = mlflow.search_logged_models(experiment_ids=[runs["tfidf"].info.experiment_id], output_format="list")
    assert [(m.name, str(m.status)) for m in models if m.source_run_id == runs["tfidf"].info.run_id] == [
        ("tfidf", "READY")
    ]


def test_two_promotes_at_once_leave_the_alias_on_the_best_candidate(tmp_path: Path, small_dataset: Path) -> None:
    digest = data.load_splits(DataConfig(dataset=str(small_dataset))).digest
    name = f"concurrent-{uuid.uuid4().hex[:8]}"
    scores = {}
    for value in (0.41, 0.73, 0.55):
        with mlflow.start_run() as run:
            mlflow.set_tags({"stage": "tfidf", "dataset_digest": digest})
            mlflow.log_metrics({"val_f1_weighted": value, "val_accuracy": value})
            log_keyword_model(input_example=False)
        scores[run.info.run_id] = value
    best = max(scores, key=scores.get)
    promote = ["promote", "--dataset", str(small_dataset), "--registered_model", name]

    results = start_together([promote, promote], tmp_path)

    for code, output in results:
        assert code == 0, output[-3000:]
    client = MlflowClient()
    assert client.get_model_version_by_alias(name, "champion").run_id == best
    assert [v.run_id for v in client.search_model_versions(f"name = '{name}'")] == [best]
    promotions = mlflow.search_runs(filter_string="tags.stage = 'promote'", output_format="list")
    assert [run.info.status for run in promotions] == ["FINISHED", "FINISHED"]
