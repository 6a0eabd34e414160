"""Every stage over HTTP against the session's team tracking server (PostgreSQL, proxied artifacts, logins).

Two whole studies (`mlflow run . --env-manager local`, tiny model, small data) run at once from two
processes into one experiment and one registered model; the tests then read them back, promote a
better run, predict with and serve `models:/<name>@champion` through the server. Fine-tuning is
interrupted and resumed, `clean-stale` meets a run of another host, and `retry_on_conflict` lets
the REST store's real errors through.
"""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, data, tracking
from emotion_exp.cli import cli
from emotion_exp.config import DataConfig
from tests.conftest import REPO_ROOT
from tests.helpers import (
    complete_checkpoints,
    dead_pid,
    emotion_exp,
    finish,
    make_run,
    mlflow_run,
    owned_by,
    run_of_pid,
    study_children,
    study_params,
    tiny_finetune,
    wait_for,
)
from tests.model_server import serving
from tests.pyfunc_models import LABELS, log_keyword_model
from tests.tracking_server import ADMIN, TrackingServer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:An input example was not provided")]
STUDY_TIMEOUT_S = 900


@dataclass(frozen=True)
class Studies:
    server: TrackingServer
    experiment: str
    experiment_id: str
    registered_model: str
    digest: str
    workdir: Path


@pytest.fixture(scope="module")
def studies(tracking_server: TrackingServer, small_dataset: Path, tiny_model_dir: Path, tmp_path_factory) -> Studies:
    """Two `mlflow run .` studies started together into one experiment and one registered model."""
    experiment, registered_model = f"studies-{uuid.uuid4().hex[:8]}", f"studies-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("studies")
    params = [f"{k}={v}" for k, v in study_params(small_dataset, tiny_model_dir, registered_model).items()]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tracking_server.credentials().items():
            patch.setenv(key, value)
        patch.chdir(workdir)
        # `mlflow run` creates a missing experiment without retrying a race: that is MLflow's launcher, not ours.
        experiment_id = MlflowClient(tracking_server.url).create_experiment(experiment)
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(
                    lambda _: mlflow_run("main", experiment, tracking_server.url, *params, timeout=STUDY_TIMEOUT_S),
                    (1, 2),
                )
            )
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    digest = data.load_splits(DataConfig(dataset=str(small_dataset))).digest
    return Studies(tracking_server, experiment, experiment_id, registered_model, digest, workdir)


@pytest.fixture
def admin(studies: Studies, on_server: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """The client as admin, in the studies' experiment (by both of MLflow's settings, as a stage reads them)."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", studies.experiment)
    mlflow.set_experiment(studies.experiment)
    return MlflowClient()


def test_two_studies_at_once_both_finish_every_stage_with_artifacts_behind_the_proxy(studies, admin) -> None:
    runs = mlflow.search_runs(experiment_names=[studies.experiment], output_format="list")
    parents = [r for r in runs if r.data.tags.get("stage") == "main"]
    assert len(parents) == 2
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED"
        assert sorted(r.data.tags["stage"] for r in children) == sorted(study_children())
        assert {r.info.status for r in children} == {"FINISHED"}
        # The champion's evaluate run carries the digest of the split it scored, not of the whole dataset.
        trained = [r for r in children if r.data.tags["stage"] != "evaluate"]
        assert {r.data.tags["dataset_digest"] for r in [parent, *trained]} == {studies.digest}
        table = pd.read_csv(
            mlflow.artifacts.download_artifacts(f"runs:/{parent.info.run_id}/comparison/comparison.csv")
        )
        assert list(table["stage"]) == list(catalog.compared_in_study())
        [probe] = [r for r in children if r.data.tags["stage"] == "probe"]
        assert probe.data.tags["features_run_id"]  # its features came back through the proxy
    for run in runs:
        # Artifacts go through the server's proxy and land in its artifact store, not beside the client.
        assert run.info.artifact_uri == f"mlflow-artifacts:/{studies.experiment_id}/{run.info.run_id}/artifacts"
    stored = set(studies.server.bucket_keys(f"{studies.experiment_id}/"))  # the server's S3 bucket (--object-store)
    for parent in parents:
        assert f"{studies.experiment_id}/{parent.info.run_id}/artifacts/plots/comparison.png" in stored
    assert not (studies.server.folder / "artifacts").exists()
    models = mlflow.search_logged_models(experiment_ids=[studies.experiment_id], output_format="list")
    assert len(models) >= 6 and all(m.artifact_location.startswith("mlflow-artifacts:/") for m in models)
    assert not (studies.workdir / "mlruns").exists() and not (studies.workdir / "mlartifacts").exists()
    champion = admin.get_model_version_by_alias(studies.registered_model, "champion")
    candidates = {r.info.run_id for r in runs if r.data.tags.get("stage") in catalog.compared_in_study()}
    assert champion.run_id in candidates
    versions = admin.search_model_versions(f"name = '{studies.registered_model}'")
    assert len({v.run_id for v in versions}) == len(versions), "a run registered twice"


def test_promote_moves_the_alias_to_a_strictly_better_run(studies, admin, small_dataset: Path) -> None:
    before = admin.get_model_version_by_alias(studies.registered_model, "champion")
    with mlflow.start_run() as better:
        mlflow.set_tags({"stage": "tfidf", "dataset_digest": studies.digest})
        mlflow.log_metrics({"val_f1_weighted": 1.0, "val_accuracy": 1.0})
        log_keyword_model(input_example=False)
    # Hand-set scores beside a keyword model: the strict rule (the default rule tests the two models' predictions).
    promote = ["promote", "--dataset", str(small_dataset), "--registered_model", studies.registered_model]
    promote += ["--rule", "better"]

    result = CliRunner().invoke(cli, promote)

    assert result.exit_code == 0, result.output
    after = admin.get_model_version_by_alias(studies.registered_model, "champion")
    assert after.run_id == better.info.run_id and int(after.version) > int(before.version)


def test_predict_and_serve_load_the_champion_through_the_server(studies, admin, tmp_path: Path, monkeypatch) -> None:
    uri = f"models:/{studies.registered_model}@champion"
    # The promote test may have made a model defined in tests/ the champion: let the server import it.
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["i feel so happy today", "this waiting makes me anxious"]}).to_csv(texts, index=False)
    output = tmp_path / "predictions.csv"

    result = mlflow_run(
        "predict", studies.experiment, studies.server.url, f"input={texts}", f"output={output}", f"model_uri={uri}"
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert set(pd.read_csv(output)["label"]) <= set(LABELS)
    [predict_run] = mlflow.search_runs(filter_string="tags.stage = 'predict'", output_format="list")
    assert "predictions/predictions.csv" in {
        a.path for a in admin.list_artifacts(predict_run.info.run_id, "predictions")
    }
    with serving(uri, studies.server.url, tmp_path) as url:
        response = requests.post(f"{url}/invocations", json={"inputs": ["so happy"]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in LABELS


def test_finetune_interrupted_and_resumed_over_http_ends_one_finished_run(
    on_server, tmp_path: Path, small_dataset: Path, tiny_model_dir: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"
    options = [
        *tiny_finetune(small_dataset, tiny_model_dir, 2),
        "--registered_model",
        "",
        "--output_dir",
        str(checkpoints),
    ]
    log = tmp_path / "interrupted.log"
    process = emotion_exp(*options, log=log)
    wait_for(lambda: complete_checkpoints(checkpoints) != [], process, log, "a first checkpoint")
    run_id = run_of_pid(process.pid)
    process.send_signal(signal.SIGINT)
    assert finish(process, log) == 130, log.read_text()[-3000:]
    assert mlflow.get_run(run_id).info.status == "KILLED"

    log = tmp_path / "resumed.log"
    assert finish(emotion_exp(*options, "--resume", run_id, log=log), log) == 0, log.read_text()[-3000:]

    [run] = mlflow.search_runs(output_format="list")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert "checkpoint-" in run.data.tags["resumed_from"]
    assert len({m.step for m in MlflowClient().get_metric_history(run_id, "eval_loss")}) == 2
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")


def test_clean_stale_on_a_shared_server_skips_runs_of_other_hosts_and_says_why(on_server) -> None:
    elsewhere = make_run({"stage": "finetune", **owned_by(4242, host="ci-runner-7", boot_id="ci-runner-7-boot")})
    gone = make_run({"stage": "dummy", **owned_by(dead_pid())})

    result = CliRunner().invoke(cli, ["clean-stale"])

    assert result.exit_code == 0, result.output
    assert "2 RUNNING run(s)" in result.output and "1 stale" in result.output
    assert f"{elsewhere} (finetune): pid 4242 on host 'ci-runner-7'" in result.output
    assert "cannot be checked from" in result.output and "run clean-stale on that host" in result.output
    assert mlflow.get_run(elsewhere).info.status == "RUNNING"
    assert "error" not in mlflow.get_run(elsewhere).data.tags
    assert mlflow.get_run(gone).info.status == "FAILED"


def test_retry_on_conflict_lets_the_rest_stores_real_errors_through(
    on_server, tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = tracking.current_experiment_id()
    registered_model = f"conflict-{uuid.uuid4().hex[:8]}"
    MlflowClient().create_registered_model(registered_model)
    reader, password = tracking_server.add_user("READ", experiment_id=experiment_id, registered_model=registered_model)
    calls = []

    def create_run() -> None:
        calls.append(1)
        MlflowClient().create_run(experiment_id)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", reader)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(MlflowException) as denied:
        tracking.retry_on_conflict(create_run)
    assert denied.value.error_code == "PERMISSION_DENIED" and len(calls) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.admin_password)
    with pytest.raises(MlflowException) as exists:  # a name really taken stays an error after the retries
        tracking.retry_on_conflict(lambda: MlflowClient().create_registered_model(registered_model))
    assert exists.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert mlflow.search_runs(output_format="list") == []
