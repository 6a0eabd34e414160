"""`deploy/tracking-server up --object-store`: artifacts in SeaweedFS's S3 bucket, its keys kept secret.

The session's server runs with `--object-store`, so every team-server test already goes through S3;
these check where the artifacts land, what `status` says, that the keys appear in no command line,
settings file or output, and that `down` (or a failed `up`) leaves no SeaweedFS running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT
from tests.pyfunc_models import LABELS, log_keyword_model
from tests.tracking_server import TrackingServer, each_process, pids_of, run_script

pytestmark = pytest.mark.slow


def keys_of(folder: Path) -> list[str]:
    return [(folder / "secrets" / name).read_text().strip() for name in ("s3-access-key", "s3-secret-key")]


def command_lines() -> str:
    def command_line(entry: Path) -> str:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")

    return "\n".join(command for _, command in each_process(command_line))


def test_a_runs_artifacts_are_in_the_bucket_and_not_on_the_servers_disk(
    tracking_server: TrackingServer, on_server: str
) -> None:
    with mlflow.start_run() as run:
        mlflow.log_text("kept in S3", "notes/s3.txt")

    prefix = f"{run.info.experiment_id}/{run.info.run_id}/"
    assert tracking_server.bucket_keys(prefix) == [f"{prefix}artifacts/notes/s3.txt"]
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/s3.txt") == "kept in S3"
    assert not (tracking_server.folder / "artifacts").exists()
    assert not list(tracking_server.folder.rglob("s3.txt"))  # SeaweedFS keeps it in its volumes, not as a file


def test_the_spark_engine_scores_the_champion_read_from_the_bucket(
    tracking_server: TrackingServer, on_server: str, tmp_path: Path
) -> None:
    pytest.importorskip("pyspark", reason="the [spark] extra is not installed")
    name = f"spark-s3-{on_server[-8:]}"
    with mlflow.start_run():
        logged = log_keyword_model(input_example=False)  # models:/<model id>
        version = mlflow.register_model(logged, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)
    source = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["i feel so happy today", "this waiting makes me anxious"] * 50}).to_csv(source, index=False)
    # A fresh process as a user runs it: the keyword model is defined in tests/, which the workers must import.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "emotion_exp", "predict", "--engine", "spark", "--input", str(source)]
    command += ["--output", str(tmp_path / "out"), "--model_uri", f"models:/{name}@champion"]

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert finished.returncode == 0, finished.stderr[-3000:]
    predictions = pd.read_parquet(tmp_path / "out")  # Spark writes a folder of parquet parts
    assert len(predictions) == 100 and set(predictions["label"]) <= set(LABELS)
    [run] = mlflow.search_runs(filter_string="tags.stage = 'predict'", output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["engine"] == "spark"
    # The model the workers scored with came from the bucket: the server keeps no artifact on its disk.
    stored = tracking_server.bucket_keys(f"{run.info.experiment_id}/")
    assert f"{run.info.experiment_id}/models/{logged.rsplit('/', 1)[1]}/artifacts/MLmodel" in stored, stored
    assert not (tracking_server.folder / "artifacts").exists()


def test_status_shows_the_object_store_and_no_key_is_shown_anywhere(tracking_server: TrackingServer) -> None:
    settings = json.loads((tracking_server.folder / "server.json").read_text())
    status = tracking_server.script("status")
    again = tracking_server.script("up")  # already running: says so

    assert status.returncode == 0, status.stderr
    assert settings["artifacts_destination"] == "s3://mlflow"
    port = settings["object_store"]["s3.port"]
    assert "object store:  SeaweedFS running, pid " in status.stdout
    assert f"S3 at http://127.0.0.1:{port}, bucket mlflow" in status.stdout
    shown = f"{status.stdout}\n{status.stderr}\n{again.stdout}\n{again.stderr}\n{command_lines()}"
    for key in keys_of(tracking_server.folder):
        assert key not in shown and key not in json.dumps(settings)


def test_up_starts_seaweedfs_down_stops_it_and_a_plain_up_restarts_it(tmp_path: Path) -> None:
    folder = tmp_path / "server"
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        up = run_script("up", "--dir", str(folder), "--object-store", "--backend-store-uri", backend, "--workers", "1")
        assert up.returncode == 0, up.stderr
        assert "artifacts: SeaweedFS running" in up.stdout
        down = run_script("down", "--dir", str(folder))
        assert down.returncode == 0 and "stopped SeaweedFS pid" in down.stdout, down.stderr
        assert pids_of(folder) == []
        stopped = run_script("status", "--dir", str(folder))
        assert stopped.returncode == 3 and "object store:  SeaweedFS stopped" in stopped.stdout
        again = run_script("up", "--dir", str(folder))  # the setting is remembered in server.json

        assert again.returncode == 0, again.stderr
        assert "artifacts: SeaweedFS running" in again.stdout
        shown = "\n".join([up.stdout, up.stderr, again.stdout, again.stderr, (folder / "server.json").read_text()])
        assert not any(key in shown for key in keys_of(folder))
    finally:
        run_script("down", "--dir", str(folder))
    assert pids_of(folder) == []


def test_a_failed_up_leaves_no_seaweedfs_running(tmp_path: Path) -> None:
    # SeaweedFS starts, then `mlflow server` refuses the admin's short password and exits.
    folder = tmp_path / "server"
    result = run_script(
        "up", "--dir", str(folder), "--object-store", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--auth", "--auth-database-uri", f"sqlite:///{tmp_path / 'users.db'}", "--workers", "1", "--timeout", "120",
        env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "short"},
    )  # fmt: skip

    assert result.returncode == 1 and "mlflow server exited" in result.stderr, result.stderr
    assert (folder / "seaweedfs.log").exists()  # it had started
    assert pids_of(folder) == []
    assert not (folder / "seaweedfs.pid").exists()


def test_object_store_with_an_artifacts_destination_is_refused(tmp_path: Path) -> None:
    result = run_script(
        "up", "--dir", str(tmp_path / "server"), "--object-store", "--artifacts-destination", "s3://elsewhere"
    )
    assert result.returncode == 1 and "drop --artifacts-destination" in result.stderr
    assert "Traceback" not in result.stderr
