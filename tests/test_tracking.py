"""The run lifecycle's public routes: which experiment a run goes to, when a new store is removed, who owns a run."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from emotion_exp import tracking


@pytest.fixture
def experiment_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No experiment chosen by the environment (the session's fixture sets both variables)."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return monkeypatch


def test_the_experiment_is_the_one_mlflow_experiment_name_names_and_is_created_when_new(experiment_settings) -> None:
    name = f"named-{uuid.uuid4().hex[:8]}"
    experiment_settings.setenv("MLFLOW_EXPERIMENT_NAME", name)

    created = tracking.current_experiment_id()

    assert mlflow.get_experiment_by_name(name).experiment_id == created
    assert tracking.current_experiment_id() == created
    with tracking.stage_run("dummy", {}) as run:
        assert run.info.experiment_id == created


def test_an_experiment_id_that_contradicts_the_name_is_refused(experiment_settings) -> None:
    name = f"named-{uuid.uuid4().hex[:8]}"
    other = mlflow.create_experiment(f"other-{uuid.uuid4().hex[:8]}")
    experiment_settings.setenv("MLFLOW_EXPERIMENT_NAME", name)
    experiment_settings.setenv("MLFLOW_EXPERIMENT_ID", other)

    with pytest.raises(MlflowException, match=f"value `{other}` does not match the experiment id"):
        tracking.current_experiment_id()


def test_the_experiment_id_alone_chooses_and_nothing_means_mlflows_default(experiment_settings) -> None:
    assert tracking.current_experiment_id() == "0"

    chosen = mlflow.create_experiment(f"by-id-{uuid.uuid4().hex[:8]}")
    experiment_settings.setenv("MLFLOW_EXPERIMENT_ID", chosen)
    assert tracking.current_experiment_id() == chosen

    experiment_settings.setenv("MLFLOW_EXPERIMENT_ID", "987654321")
    with pytest.raises(MlflowException, match="987654321"):
        tracking.current_experiment_id()


def test_inside_a_run_the_experiment_is_the_runs(isolated_mlflow: str, experiment_settings) -> None:
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(isolated_mlflow).experiment_id) as parent:
        experiment_settings.setenv("MLFLOW_EXPERIMENT_NAME", f"elsewhere-{uuid.uuid4().hex[:8]}")
        assert tracking.current_experiment_id() == parent.info.experiment_id
        with tracking.stage_run("dummy", {}) as child:
            assert child.info.experiment_id == parent.info.experiment_id


@pytest.mark.slow  # creates new stores: MLflow's schema migrations take seconds
def test_a_new_store_is_removed_only_while_it_holds_nothing_but_failed_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("failed-early")
    client.set_terminated(client.create_run(experiment).info.run_id, "FAILED")
    assert not tracking.remove_store_if_empty(tmp_path / "other.db")  # not the current store

    kept = []
    model = client.create_registered_model("a-model")
    kept.append(tracking.remove_store_if_empty(database))
    client.delete_registered_model(model.name)
    logged = client.create_logged_model(experiment)
    kept.append(tracking.remove_store_if_empty(database))
    client.delete_logged_model(logged.model_id)
    finished = client.create_run(experiment).info.run_id
    client.set_terminated(finished, "FINISHED")
    client.delete_run(finished)  # a deleted run is still there, until garbage-collected
    kept.append(tracking.remove_store_if_empty(database))
    assert kept == [False, False, False] and database.exists()
    assert client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)

    client.restore_run(finished)
    client.set_terminated(finished, "FAILED")

    assert tracking.remove_store_if_empty(database)
    assert not database.exists()


def test_a_runs_owner_records_its_start_in_the_kernels_clock_ticks() -> None:
    """The count /proc/<pid>/stat gives (field 22): runs that an emotion-exp before psutil recorded stay checkable."""
    ticks = Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(")")[2].split()[19]

    tags = tracking.owner_tags()

    assert tags["pid_started"] == ticks
    assert tracking.process_state(tags)[0] == tracking.ALIVE
    assert tracking.process_state({**tags, "pid_started": str(int(ticks) + 1)})[0] == tracking.GONE
