"""`deploy/tracking-server` and its logins, against the session's real server on loopback.

Who may do what: no credentials and a wrong password get 401 and write nothing; a user with READ
on the experiment and the registered model lists runs and loads the champion but gets 403 on
logging a run, registering a version and moving the alias; a user with EDIT does all of it. An
artifact path that climbs out with `..` is refused by the server.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.conftest import REPO_ROOT
from tests.pyfunc_models import log_keyword_model
from tests.tracking_server import ADMIN, TrackingServer, pids_of, run_script, session_commands

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:An input example was not provided")]
API = "/api/2.0/mlflow"
NOTE = "a run artifact"


def test_up_again_keeps_the_running_server_and_status_says_where(tracking_server: TrackingServer) -> None:
    pid = (tracking_server.folder / "mlflow.pid").read_text().split()[0]

    again = tracking_server.script("up")

    assert again.returncode == 0, again.stderr
    assert f"already running: mlflow server pid {pid} at {tracking_server.url}" in again.stdout
    assert (tracking_server.folder / "mlflow.pid").read_text().split()[0] == pid
    status = tracking_server.script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"mlflow server: running, pid {pid}, healthy, {tracking_server.url}, auth on" in status.stdout
    assert "postgresql:    running, pid" in status.stdout and "127.0.0.1:" in status.stdout


def test_the_server_runs_without_mlflows_job_runner(tracking_server: TrackingServer) -> None:
    """MLflow 3 starts a job runner (huey consumers, for GenAI jobs) beside a server on a database store
    unless told not to: seven more processes this project never uses."""
    leader = int((tracking_server.folder / "mlflow.pid").read_text().split()[0])

    commands = session_commands(leader)

    assert any("-m uvicorn" in command for command in commands), commands  # its own processes are seen
    assert not [command for command in commands if "huey" in command or "_job_runner" in command]


def test_up_with_auth_but_no_admin_credentials_refuses_before_starting_anything(tmp_path: Path) -> None:
    folder = tmp_path / "server"

    result = run_script("up", "--dir", str(folder), "--auth", "--port", "1")

    assert result.returncode == 1
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr and "there is no default password" in result.stderr
    assert not (folder / "postgres").exists() and pids_of(folder) == []


def test_another_host_without_auth_gets_the_trust_warning_and_an_address_not_of_this_machine_is_refused(
    tmp_path: Path,
) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: `up` finds that before it starts anything.
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "server"
    result = run_script(
        "up", "--dir", str(folder), "--host", "192.0.2.1", "--backend-store-uri", backend, "--port", "5999",
        "--workers", "1",
    )  # fmt: skip

    assert "WARNING: the tracking server listens on 192.0.2.1 without --auth" in result.stderr
    assert "See SECURITY.md" in result.stderr
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "cannot listen on 192.0.2.1:5999" in result.stderr
        and "--host must be an address of this machine" in result.stderr
    )
    assert not (folder / "mlflow.log").exists() and not (tmp_path / "mlflow.db").exists()  # nothing was started
    assert pids_of(folder) == []


def test_status_of_an_empty_folder_says_nothing_runs(tmp_path: Path) -> None:
    result = run_script("status", "--dir", str(tmp_path))
    assert result.returncode == 3 and "no tracking server" in result.stdout


def test_the_team_servers_log_has_no_starlette_deprecation_warning(tracking_server: TrackingServer) -> None:
    # MLflow's server imports starlette.middleware.wsgi, which warns in every worker: nothing an operator can act on.
    log = (tracking_server.folder / "mlflow.log").read_text()
    assert "Uvicorn running on" in log or "Listening at" in log or "Application startup complete" in log, log[-2000:]
    assert "StarletteDeprecationWarning" not in log, log[-3000:]


# --- logins --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guarded:
    """An experiment with one run and a registered model whose @champion is that run's model."""

    server: TrackingServer
    experiment_id: str
    run_id: str
    model: str
    reader: tuple[str, str]
    editor: tuple[str, str]


@pytest.fixture(scope="module")
def guarded(tracking_server: TrackingServer) -> Iterator[Guarded]:
    with pytest.MonkeyPatch.context() as patch:
        login(patch, tracking_server, ADMIN, tracking_server.admin_password)
        experiment_id = MlflowClient().create_experiment(f"guarded-{uuid.uuid4().hex[:8]}")
        model = f"guarded-{uuid.uuid4().hex[:8]}"
        with mlflow.start_run(experiment_id=experiment_id) as run:
            model_uri = log_keyword_model(input_example=False)
            mlflow.log_text(NOTE, "notes/note.txt")
        version = mlflow.register_model(model_uri, model).version
        MlflowClient().set_registered_model_alias(model, "champion", version)
    reader = tracking_server.add_user("READ", experiment_id=experiment_id, registered_model=model)
    editor = tracking_server.add_user("EDIT", experiment_id=experiment_id, registered_model=model)
    yield Guarded(tracking_server, experiment_id, run.info.run_id, model, reader, editor)


def login(patch: pytest.MonkeyPatch, server: TrackingServer, username: str, password: str) -> None:
    patch.setenv("MLFLOW_TRACKING_URI", server.url)
    patch.setenv("MLFLOW_TRACKING_USERNAME", username)
    patch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    mlflow.set_tracking_uri(server.url)


def as_admin(guarded: Guarded, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    login(monkeypatch, guarded.server, ADMIN, guarded.server.admin_password)
    return MlflowClient()


def refused(call, status: int) -> MlflowException:
    with pytest.raises(MlflowException) as caught:
        call()
    assert f"{status}" in str(caught.value) or getattr(caught.value, "get_http_status_code", lambda: 0)() == status
    return caught.value


def test_without_credentials_every_call_gets_401_and_nothing_is_written(guarded: Guarded, monkeypatch) -> None:
    url = guarded.server.url
    calls = [
        ("GET", f"{API}/experiments/get", {"experiment_id": guarded.experiment_id}),
        ("POST", f"{API}/runs/create", {"experiment_id": guarded.experiment_id}),
        ("POST", f"{API}/experiments/create", {"name": "written-without-login"}),
        ("POST", f"{API}/registered-models/alias", {"name": guarded.model, "alias": "champion", "version": "2"}),
        ("POST", f"{API}/model-versions/create", {"name": guarded.model, "source": "/tmp"}),
    ]
    for method, endpoint, payload in calls:
        send = requests.get if method == "GET" else requests.post
        response = send(url + endpoint, **({"params": payload} if method == "GET" else {"json": payload}), timeout=30)
        assert response.status_code == 401, (endpoint, response.text)

    client = as_admin(guarded, monkeypatch)
    assert [r.info.run_id for r in client.search_runs([guarded.experiment_id])] == [guarded.run_id]
    assert client.get_experiment_by_name("written-without-login") is None
    assert [v.version for v in client.search_model_versions(f"name = '{guarded.model}'")] == ["1"]


def test_a_wrong_password_is_refused(guarded: Guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"{guarded.server.url}{API}/experiments/get"
    for username, password in ((ADMIN, "not-the-password"), (guarded.reader[0], guarded.editor[1])):
        response = requests.get(
            endpoint, params={"experiment_id": guarded.experiment_id}, auth=(username, password), timeout=30
        )
        assert response.status_code == 401, response.text
    login(monkeypatch, guarded.server, ADMIN, "not-the-password")
    refused(lambda: MlflowClient().get_experiment(guarded.experiment_id), 401)


def test_a_reader_lists_runs_and_loads_the_champion_but_cannot_write(guarded: Guarded, monkeypatch) -> None:
    login(monkeypatch, guarded.server, *guarded.reader)
    client = MlflowClient()

    assert [r.info.run_id for r in client.search_runs([guarded.experiment_id])] == [guarded.run_id]
    champion = mlflow.pyfunc.load_model(f"models:/{guarded.model}@champion")
    assert champion.predict(["i am so happy"])["label"].tolist() == ["joy"]

    refused(lambda: client.create_run(guarded.experiment_id), 403)
    refused(lambda: client.log_metric(guarded.run_id, "written_by_reader", 1.0), 403)
    champion_source = client.get_model_version(guarded.model, "1").source
    refused(lambda: mlflow.register_model(champion_source, guarded.model), 403)
    refused(lambda: client.set_registered_model_alias(guarded.model, "champion", "1"), 403)
    refused(lambda: client.delete_registered_model_alias(guarded.model, "champion"), 403)

    admin = as_admin(guarded, monkeypatch)
    assert [r.info.run_id for r in admin.search_runs([guarded.experiment_id])] == [guarded.run_id]
    assert "written_by_reader" not in admin.get_run(guarded.run_id).data.metrics
    assert [v.version for v in admin.search_model_versions(f"name = '{guarded.model}'")] == ["1"]
    assert admin.get_registered_model(guarded.model).aliases == {"champion": "1"}


def test_an_editor_logs_a_run_registers_a_version_and_moves_the_alias(guarded: Guarded, monkeypatch) -> None:
    login(monkeypatch, guarded.server, *guarded.editor)
    client = MlflowClient()

    with mlflow.start_run(experiment_id=guarded.experiment_id) as run:
        mlflow.log_metric("val_f1_weighted", 0.9)
        model_uri = log_keyword_model(input_example=False)
    version = mlflow.register_model(model_uri, guarded.model).version
    client.set_registered_model_alias(guarded.model, "champion", version)

    assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    assert client.get_model_version_by_alias(guarded.model, "champion").run_id == run.info.run_id
    assert mlflow.pyfunc.load_model(f"models:/{guarded.model}@champion").predict(["scared"])["label"][0] == "fear"


def docs_add_user_command() -> str:
    """The `python -c '...'` that adds a user in docs/team-server.md."""
    team = (REPO_ROOT / "docs/team-server.md").read_text()
    match = re.search(r"python -c '(.+?)'\n", team, re.DOTALL)
    assert match, "docs/team-server.md has no `python -c '...'` adding a user"
    return match.group(1)


def test_the_docs_command_adds_a_read_only_user(guarded: Guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    username = f"bob-{uuid.uuid4().hex[:8]}"
    code = (
        docs_add_user_command()
        .replace("http://127.0.0.1:5000", guarded.server.url)
        .replace('"bob"', repr(username))
        .replace('"experiment", "1"', f'"experiment", {guarded.experiment_id!r}')
        .replace('"emotion-classifier"', repr(guarded.model))
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **guarded.server.credentials()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    login(monkeypatch, guarded.server, username, "a-long-password")
    client = MlflowClient()
    assert guarded.run_id in [r.info.run_id for r in client.search_runs([guarded.experiment_id])]
    assert client.get_registered_model(guarded.model).aliases["champion"]
    refused(lambda: client.create_run(guarded.experiment_id), 403)


def raw_get(url: str, path: str, username: str, password: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client normalises the `..` away)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    try:
        connection.request("GET", path, headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_an_artifact_path_with_dot_dot_is_refused(guarded: Guarded) -> None:
    server = guarded.server
    secret = (server.folder / "secrets" / "pgpass").read_bytes().split(b":")[-1].strip()
    artifacts = f"/api/2.0/mlflow-artifacts/artifacts/{guarded.experiment_id}/{guarded.run_id}/artifacts"
    climbing = [
        f"{artifacts}/../../../../secrets/pgpass",
        f"{artifacts}/%2E%2E/%2E%2E/%2E%2E/%2E%2E/secrets/pgpass",
        f"/get-artifact?run_id={guarded.run_id}&path=../../../../secrets/pgpass",
        f"/ajax-api/2.0/mlflow/get-artifact?run_id={guarded.run_id}&path=..%2F..%2F..%2F..%2Fsecrets%2Fpgpass",
    ]
    for path in climbing:
        status, body = raw_get(server.url, path, ADMIN, server.admin_password)
        assert 400 <= status < 500, (path, status, body[:300])
        assert secret not in body
    # The same request without `..` reaches the run's artifacts: the refusals above are about the path.
    status, body = raw_get(server.url, f"{artifacts}/notes/note.txt", ADMIN, server.admin_password)
    assert (status, body.decode()) == (200, NOTE)
