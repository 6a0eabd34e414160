"""What several test modules share (test modules import from here, never from each other): a run's artifacts,
`mlflow run` in a subprocess, a model's own scores, the tiny fine-tune, real `emotion-exp` processes, and the
smallest study with the checks of what it leaves in the store."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score

from emotion_exp import catalog, registry, tracking
from emotion_exp.config import FinetuneConfig
from emotion_exp.data import DatasetSplits
from tests.conftest import REPO_ROOT

LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
# For an `mlflow server` or `mlflow ui` on a database store: MLflow 3 otherwise starts its job runner
# (huey consumers for GenAI jobs no test uses), seven more processes importing MLflow, which made the
# server answer 7 s later and cost about 30 CPU-s more per start on two cores (deploy/tracking-server
# turns it off the same way).
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""The study's six labels, in id order: the bundled sample's and every test dataset's."""


@contextlib.contextmanager
def in_experiment(name: str) -> Iterator[mlflow.entities.Experiment]:
    """Inside: ``name`` is the experiment by both of MLflow's settings; after: the test's own again.

    ``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID`` beside the test's ``MLFLOW_EXPERIMENT_NAME``;
    a stage refuses the two when they name different experiments, as MLflow does. Session fixtures are
    built inside a test's setup or body, so each restores the test's settings instead of counting on order.
    """
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        yield mlflow.set_experiment(name)
    if before is not None:
        mlflow.set_experiment(experiment_id=before)


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


# --- real `emotion-exp` processes (the interrupt, signal, sweep, distributed and team-server tests) ---------

EPOCHS, BATCH_SIZE, TRAIN_ROWS = 3, 4, 120
STEPS_PER_EPOCH = TRAIN_ROWS // BATCH_SIZE
WAIT_S = 240  # bound on every wait for a process; far above what each step needs


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def owned_by(pid: int, **changes: str) -> dict[str, str]:
    """The owner tags a run started now by process ``pid`` on this machine would carry, with ``changes``."""
    tags = tracking.owner_tags()
    if pid != os.getpid():
        tags.update(pid=str(pid), pid_started="1")  # a process that started right after boot
    return {**tags, **changes}


def make_run(tags: dict[str, str], status: str = "RUNNING") -> str:
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]).experiment_id
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def emotion_exp(*args: str, log: Path) -> subprocess.Popen:
    """Start the `emotion-exp` console script (or ``python -m emotion_exp``), output to ``log``."""
    script = Path(sys.executable).with_name("emotion-exp")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "emotion_exp"]
    # Two of these run at once on two cores: one torch thread each, or their spinning threads starve each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, what: str) -> None:
    """Poll until ``condition`` holds; fail if the process exits first or the bound runs out."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {WAIT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def finish(process: subprocess.Popen, log: Path) -> int:
    try:
        return process.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running after {WAIT_S} s:\n{log.read_text()[-3000:]}")


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the checkpoints whose save finished (the Trainer writes trainer_state.json last)."""
    return sorted(int(p.parent.name.split("-")[1]) for p in folder.glob("*/checkpoint-*/trainer_state.json"))


def run_of_pid(pid: int) -> str | None:
    """The id of the run that process ``pid`` has open, if it has one yet."""
    runs = mlflow.search_runs(filter_string=f"tags.pid = '{pid}'", output_format="list")
    return runs[0].info.run_id if runs else None


def tiny_finetune(dataset: Path, model: Path, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE) -> list[str]:
    """The finetune command line of the tiny model on small data that the interrupt tests start."""
    return [
        "finetune",
        "--dataset",
        str(dataset),
        "--model",
        str(model),
        "--epochs",
        str(epochs),
        "--batch_size",
        str(batch_size),
        "--max_length",
        "16",
        "--umap_max_points",
        "50",
    ]


def history_steps(run_id: str, metric: str) -> list[int]:
    return sorted({m.step for m in MlflowClient().get_metric_history(run_id, metric)})


# --- the smallest study (test_study and the team server's) ------------------------------------------


def study_children() -> set[str]:
    """The stages of a study's child runs: main's stages (the registry's) and the evaluate of its champion."""
    return {*catalog.in_the_study(), "evaluate"}


def study_params(small_dataset: Path, tiny_model_dir: Path, registered_model: str) -> dict[str, str]:
    """The smallest study: tiny encoder, small data, one epoch, short texts."""
    return {
        "dataset": str(small_dataset),
        "model": str(tiny_model_dir),
        "epochs": "1",
        "max_length": "32",
        "batch_size": "16",
        "umap_max_points": "200",
        "registered_model": registered_model,
    }


def sample_texts(count: int) -> list[str]:
    """Real-length texts of the bundled sample, shortest to longest mixed as in the data."""
    sample = REPO_ROOT / "emotion_exp" / "sample"
    frame = pd.concat(pd.read_csv(sample / f"{split}.csv") for split in ("train", "validation", "test"))
    return frame["text"].astype(str).tolist()[:count]


def check_study(experiment: str, registered_model: str) -> mlflow.entities.Run:
    """The parent and its children in the store, the comparison on the parent and the champion."""
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    [parent] = [r for r in runs if r.data.tags.get("stage") == "main"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["stage"] for r in children} == study_children()
    assert all(r.info.status == "FINISHED" for r in children)
    assert len(parent.data.tags["dataset_digest"]) == 64
    trained = [r for r in children if r.data.tags["stage"] != "evaluate"]
    assert {r.data.tags.get("dataset_digest") for r in trained} == {parent.data.tags["dataset_digest"]}

    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert artifacts == {"comparison/comparison.md", "comparison/comparison.csv"}
    assert "plots/comparison.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="comparison/comparison.csv")
    )
    compared = list(catalog.compared_in_study())
    assert list(table["stage"]) == compared  # every model stage of the registry, in its order
    markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/comparison/comparison.md")
    assert all(f"| {stage}" in markdown for stage in compared) and "val_f1_weighted" in markdown
    check_paired_comparison(table, parent)
    for stage in compared:
        for name in ("val_accuracy", "val_accuracy_ci_low", "val_accuracy_ci_high", "val_accuracy_delta"):
            assert parent.data.metrics[f"{stage}_{name}"] == pytest.approx(table.set_index("stage").loc[stage, name])
    # The headline only (per stage: validation accuracy and the paired difference, with their intervals; the
    # champion's test scores; the data's rows and train overlaps): the rest of the table is in comparison.csv.
    assert len(parent.data.metrics) <= 7 * len(compared) + 4 + 5, sorted(parent.data.metrics)
    assert parent.info.run_name.startswith(f"main: {table.loc[table['val_accuracy'].idxmax(), 'stage']} best: ")
    assert parent.data.tags["mlflow.note.content"].startswith(
        f"**{table.loc[table['val_accuracy'].idxmax(), 'stage']}**"
    )

    champion = client.get_model_version_by_alias(registered_model, "champion")
    # main ends with an evaluate of the new champion on the study's test split, reported on the parent.
    [evaluated] = [r for r in children if r.data.tags["stage"] == "evaluate"]
    assert evaluated.data.tags["registered_version"] == str(champion.version)
    assert evaluated.data.metrics["test_rows"] == len(pd.read_csv(Path(parent.data.params["dataset"]) / "test.csv"))
    assert parent.data.tags["champion_evaluation"] == evaluated.info.run_id
    for metric in ("test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_f1_weighted"):
        assert parent.data.metrics[f"champion_{metric}"] == evaluated.data.metrics[metric]
    [trained_champion] = [r for r in children if r.info.run_id == champion.run_id]
    assert evaluated.data.metrics["test_accuracy"] == pytest.approx(trained_champion.data.metrics["test_accuracy"])
    logged_models = [r.info.run_id for r in children if r.data.tags["stage"] in compared]
    assert champion.run_id in [run_id for run_id in logged_models if registry.model_of_run(run_id)]
    [promote_run] = [r for r in children if r.data.tags["stage"] == "promote"]
    assert promote_run.data.params["candidate_run_id"] == champion.run_id
    return parent


def check_paired_comparison(table: pd.DataFrame, parent: mlflow.entities.Run) -> None:
    """Every model stage against the best other one, recomputed by hand from the two runs' per-text predictions."""
    by_stage = table.set_index("stage")
    models = list(catalog.compared_in_study())
    for stage in models:
        row = by_stage.loc[stage]
        others = {other: by_stage.loc[other, "val_accuracy"] for other in models if other != stage}
        assert row["versus"] == max(others, key=others.get)
        assert row["val_accuracy_ci_low"] <= row["val_accuracy"] <= row["val_accuracy_ci_high"]
        mine, theirs = (
            pd.read_parquet(
                mlflow.artifacts.download_artifacts(
                    run_id=by_stage.loc[name, "run_id"], artifact_path="predictions/per_text.parquet"
                )
            )
            for name in (stage, row["versus"])
        )
        for split, prefix in (("validation", "val"), ("test", "test")):
            a, b = (t[t["split"] == split].sort_values("row") for t in (mine, theirs))
            a_right = (a["gold"] == a["predicted"]).to_numpy()
            b_right = (b["gold"] == b["predicted"]).to_numpy()
            only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
            expected_p = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b).pvalue
            assert row[f"{prefix}_accuracy_delta"] == pytest.approx(a_right.mean() - b_right.mean())
            assert row[f"{prefix}_mcnemar_pvalue"] == pytest.approx(expected_p)
            assert row[f"{prefix}_accuracy_delta_ci_low"] <= row[f"{prefix}_accuracy_delta"]
            assert row[f"{prefix}_accuracy_delta"] <= row[f"{prefix}_accuracy_delta_ci_high"]
            if prefix == "val":  # the parent's headline: the validation difference (test's is in the table)
                assert parent.data.metrics[f"{stage}_val_mcnemar_pvalue"] == pytest.approx(expected_p)


def run_contract_violations(spec: catalog.StageSpec) -> list[str]:
    """Where a model stage's ``run`` differs from ``catalog.StageRun`` (what every workflow passes it): [] if nowhere.

    The config comes first; every argument of the contract is a keyword with the contract's
    default; anything else it takes has a default, and a stage that reports epochs takes ``callbacks``.
    """
    contract = list(inspect.signature(catalog.StageRun.__call__).parameters.values())[1:]
    run = importlib.import_module(spec.module).run
    parameters = inspect.signature(run).parameters
    found = list(parameters.values())
    wrong = []
    if not found or found[0].kind not in (found[0].POSITIONAL_ONLY, found[0].POSITIONAL_OR_KEYWORD):
        wrong.append(f"{spec.name}: run takes no config first")
    for expected in contract[1:]:
        given = parameters.get(expected.name)
        if given is None or given.kind == given.POSITIONAL_ONLY or given.default != expected.default:
            wrong.append(f"{spec.name}: run takes no {expected.name} (keyword, default {expected.default})")
    names = {p.name for p in contract}
    for extra in found[1:]:
        if extra.name not in names and extra.default is extra.empty:
            wrong.append(f"{spec.name}: run requires {extra.name}, which no workflow passes")
    if spec.reports_epochs and "callbacks" not in parameters:
        wrong.append(f"{spec.name}: reports epochs but its run takes no callbacks")
    return wrong
