"""An error that is not a user's mistake (a bug, or the environment) still ends in one line, not a traceback.

Triggered for real: MLFLOW_EXPERIMENT_ID naming another experiment than MLFLOW_EXPERIMENT_NAME makes
MLflow refuse to start the run. mlflow.set_experiment exports that variable, so a process that sets an
experiment hands it to every child it starts: the test session did so to a stage on another store, in CI.
Run as a subprocess, as a user runs it (in-process, MLflow's remembered experiment hides the variable).
"""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

# Each test starts a Python process that imports MLflow and torch: seconds each, so CI runs them, not the fast loop.
pytestmark = pytest.mark.slow

MISMATCH = "MLFLOW_EXPERIMENT_ID environment variable value `99999` does not match the experiment id"


def dummy(*options: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_EXPERIMENT_ID": "99999", **variables}
    command = [sys.executable, "-m", "emotion_exp", *options, "dummy"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_an_unexpected_error_is_one_line_naming_it() -> None:
    result = dummy()

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: MlflowException: The provided " + MISMATCH), line
    assert line.endswith("(unexpected: --debug shows the traceback)")


def test_debug_shows_the_traceback_of_an_unexpected_error() -> None:
    result = dummy("--debug")

    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "mlflow.exceptions.MlflowException: The provided " + MISMATCH in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: MlflowException: ")


def test_under_mlflow_run_an_unexpected_error_fails_the_launchers_run_with_the_reason() -> None:
    with mlflow.start_run(run_name="launcher") as launcher:  # what `mlflow run` opens before the entry point
        pass
    mlflow.MlflowClient().update_run(launcher.info.run_id, status="RUNNING")

    result = dummy(MLFLOW_RUN_ID=launcher.info.run_id)

    assert result.returncode == 1, result.stderr
    run = mlflow.get_run(launcher.info.run_id)
    assert run.info.status == "FAILED"
    assert MISMATCH in run.data.tags["error"]
    assert run.data.tags["stage"] == "dummy"
