"""`mlflow run` end to end for the dummy entry point, read back from a temporary store; a failed parameter check
under `mlflow run` (its launcher's run given by MLFLOW_RUN_ID) in process."""

from __future__ import annotations

import mlflow
import pytest

from tests.helpers import mlflow_run


@pytest.mark.slow
def test_mlflow_run_dummy_leaves_a_finished_run(tracking_uri: str, isolated_mlflow: str) -> None:
    result = mlflow_run("dummy", isolated_mlflow, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]

    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "dummy"
    assert run.data.tags["mlflow.project.entryPoint"] == "dummy"
    assert {"val_accuracy", "val_f1_weighted", "test_accuracy"} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/label_distribution.png" in artifacts
    assert len(run.inputs.dataset_inputs) == 3


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["finetune", "--epochs", "0"], "--epochs must be greater than 0"),
        (["dummy", "--strategyy", "prior"], "--strategyy"),  # click's wording of "no such option" varies
        (["probe", "--max_iter", "many"], "expected a whole number"),
        (["dummy", "--strategy", "sometimes"], "--strategy must be one of"),
    ],
)
def test_a_failed_parameter_check_tags_the_launchers_run(arguments, reason, isolated_mlflow, monkeypatch) -> None:
    """`mlflow run` creates the run before the entry point parses its options; that run is tagged like any failure."""
    from click.testing import CliRunner

    from emotion_exp.cli import cli

    experiment = mlflow.get_experiment_by_name(isolated_mlflow)
    launcher = mlflow.MlflowClient().create_run(experiment.experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)

    result = CliRunner().invoke(cli, arguments)

    assert result.exit_code != 0
    assert reason in result.output and "Traceback" not in result.output
    run = mlflow.get_run(launcher.info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["stage"] == arguments[0]
    assert run.info.run_name == arguments[0]
    assert reason in run.data.tags["error"]
