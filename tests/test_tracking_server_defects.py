"""`deploy/tracking-server` against what another local user or a crash can do to it (issue 24's six defects).

Each test sets up the hostile or broken state on loopback and checks the script refuses it with one clear
line, stops and reports only its own processes, and keeps passwords out of argv, files and output.
"""

from __future__ import annotations

import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from emotion_exp.serving import free_port
from tests.tracking_server import SCRIPT, TrackingServer, pids_of, run_script

pytestmark = pytest.mark.slow


def sqlite_up(folder: Path, port: int, *extra: str) -> subprocess.CompletedProcess:
    """`up` on a SQLite store (no PostgreSQL to wait for)."""
    backend = f"sqlite:///{folder.parent / (folder.name + '.db')}"
    return run_script(
        "up", "--dir", str(folder), "--port", str(port), "--backend-store-uri", backend, "--workers", "1", *extra
    )


def stop(folder: Path) -> None:
    """`down` in ``folder``; nothing of it may be left running."""
    run_script("down", "--dir", str(folder))
    assert pids_of(folder) == [], f"processes left in {folder}"


@pytest.fixture
def stopped_afterwards() -> Iterator[list[Path]]:
    """Folders whose servers are stopped at the end, also when the test failed."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        stop(folder)


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of one server on SQLite, started once for the tests that only read it or copy it."""
    folder = tmp_path_factory.mktemp("sqlite-server") / "server"
    started = sqlite_up(folder, free_port())
    try:
        assert started.returncode == 0, started.stderr
        yield folder
    finally:
        stop(folder)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("tracking-server: ") and len(result.stderr.strip().splitlines()) == 1


# --- 1. a port another server holds --------------------------------------------------------------


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


def test_up_on_a_port_another_server_answers_fails_naming_the_port(tmp_path: Path, stopped_afterwards) -> None:
    other = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    port = other.server_address[1]
    threading.Thread(target=other.serve_forever, daemon=True).start()
    stopped_afterwards.append(tmp_path / "s2")
    try:
        result = sqlite_up(tmp_path / "s2", port, "--timeout", "60")
    finally:
        other.shutdown()
        other.server_close()

    assert result.returncode == 1, result.stdout
    assert f"port {port} on 127.0.0.1 is already in use by another process" in result.stderr
    assert "MLFLOW_TRACKING_URI" not in result.stdout
    assert not (tmp_path / "s2" / "mlflow.pid").exists()


# --- 2. whose processes down and status act on --------------------------------------------------


def decoy_folder(tmp_path: Path, port: int) -> Path:
    """A server folder as `up` leaves it, for a server on ``port`` (never started)."""
    folder = tmp_path / "server"
    folder.mkdir(mode=0o700)
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "pg_port": None,
        "backend_store_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "auth_database_uri": None,
        "artifacts_destination": str(folder / "artifacts"),
        "workers": 1,
        "auth": False,
        "default_permission": "NO_PERMISSIONS",
    }
    (folder / "server.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("in_the_folder", [False, True], ids=["elsewhere", "in-the-folder"])
def test_a_decoy_in_the_pid_file_is_neither_reported_nor_stopped(tmp_path: Path, in_the_folder: bool) -> None:
    port = free_port()
    folder = decoy_folder(tmp_path, port)
    # Its command line holds "server" and the port, as `mlflow server`'s does.
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "server", str(port)],
        cwd=folder if in_the_folder else tmp_path,
    )
    try:
        started = psutil.Process(decoy.pid).create_time()
        # Elsewhere, its true start time; in the folder, a start time `up` did not record.
        recorded = started if not in_the_folder else started - 60
        (folder / "mlflow.pid").write_text(f"{decoy.pid} {recorded!r}\n")

        status = run_script("status", "--dir", str(folder))
        down = run_script("down", "--dir", str(folder))

        assert status.returncode == 3 and "mlflow server: stopped" in status.stdout, status.stdout
        assert down.returncode == 0 and "stopped mlflow server" not in down.stdout
        assert decoy.poll() is None, "down stopped a process that is not its server"
    finally:
        decoy.kill()
        decoy.wait()


def test_down_in_a_copied_folder_stops_nothing(sqlite_server: Path, tmp_path: Path) -> None:
    original, copy = sqlite_server, tmp_path / "server-copy"
    shutil.copytree(original, copy, symlinks=True)

    status = run_script("status", "--dir", str(copy))
    down = run_script("down", "--dir", str(copy))

    assert status.returncode == 3 and "mlflow server: stopped" in status.stdout, status.stdout
    assert "stopped mlflow server" not in down.stdout
    assert run_script("status", "--dir", str(original)).returncode == 0, "the original server was stopped"


def test_down_in_a_copy_of_the_team_server_leaves_its_postgresql_running(
    tracking_server: TrackingServer, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tracking_server.folder), str(copy)], check=True)

    status = run_script("status", "--dir", str(copy))
    down = run_script("down", "--dir", str(copy))

    assert "postgresql:    stopped" in status.stdout, status.stdout
    assert down.returncode == 0 and "stopped" not in down.stdout, down.stdout
    assert tracking_server.script("status").returncode == 0, "the copy's down stopped the team server"


# --- 3. a folder another user prepared, files a crash left --------------------------------------


def test_a_secrets_folder_others_can_write_is_refused_and_nothing_is_written_through_its_link(
    tmp_path: Path, stopped_afterwards
) -> None:
    folder = tmp_path / "server"
    (folder / "secrets").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (folder / "secrets" / "basic_auth.ini").symlink_to(victim)
    (folder / "secrets").chmod(0o777)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder / "secrets", nobody.pw_uid, nobody.pw_gid)
    stopped_afterwards.append(folder)
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"

    result = run_script(
        "up",
        *("--dir", str(folder), "--port", str(free_port()), "--backend-store-uri", backend, "--workers", "1"),
        *("--auth", "--auth-database-uri", f"sqlite:///{tmp_path / 'auth.db'}", "--timeout", "60"),
        env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "a-long-enough-password-1"},
    )

    no_traceback(result)
    assert f"{folder / 'secrets'} " in result.stderr and ("another user" in result.stderr or "uid" in result.stderr)
    assert victim.read_text() == "untouched\n"


def test_a_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "server"
    folder.mkdir()
    folder.chmod(0o777)

    result = run_script("up", "--dir", str(folder), "--port", str(free_port()), "--backend-store-uri", "sqlite:///x.db")

    no_traceback(result)
    assert "is writable by other users (mode 0777)" in result.stderr


def test_an_empty_pid_file_and_a_truncated_settings_file_give_one_clear_line(tmp_path: Path) -> None:
    folder = decoy_folder(tmp_path, free_port())
    (folder / "mlflow.pid").write_text("")

    status = run_script("status", "--dir", str(folder))
    down = run_script("down", "--dir", str(folder))
    assert status.returncode == 3 and "Traceback" not in status.stderr, status.stderr
    assert "mlflow.pid: it is empty or damaged" in status.stderr and "mlflow server: stopped" in status.stdout
    assert down.returncode == 0 and "Traceback" not in down.stderr, down.stderr

    settings = folder / "server.json"
    settings.write_text(settings.read_text()[:40])
    for command in ("status", "down", "up"):
        result = run_script(command, "--dir", str(folder))
        no_traceback(result)
        assert f"{settings} is damaged" in result.stderr


def test_a_pid_file_of_the_previous_version_still_names_the_running_server(sqlite_server: Path) -> None:
    """The previous version recorded the start time in clock ticks since boot (/proc/PID/stat's 22nd field):
    a server it started is still found after an update of the script, and a wrong start time is still refused."""
    pid_file = sqlite_server / "mlflow.pid"
    written = pid_file.read_text()
    pid = int(written.split()[0])
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    try:
        pid_file.write_text(f"{pid} {ticks}\n")
        found = run_script("status", "--dir", str(sqlite_server))
        pid_file.write_text(f"{pid} {ticks - 6000}\n")  # a minute earlier: another process with that pid
        other = run_script("status", "--dir", str(sqlite_server))
    finally:
        pid_file.write_text(written)

    assert found.returncode == 0 and f"mlflow server: running, pid {pid}" in found.stdout, found.stdout
    assert other.returncode == 3 and "mlflow server: stopped" in other.stdout, other.stdout


def test_settings_and_pid_files_are_written_whole_with_mode_0600(sqlite_server: Path) -> None:
    for name in ("server.json", "mlflow.pid"):
        assert (sqlite_server / name).stat().st_mode & 0o777 == 0o600, name
    assert [path.name for path in sqlite_server.iterdir() if path.name.endswith(".tmp")] == []


# --- 4. passwords ---------------------------------------------------------------------------------


def test_an_external_store_password_is_in_no_argv_file_or_output(
    tracking_server: TrackingServer, tmp_path: Path, stopped_afterwards
) -> None:
    import psycopg

    password = (tracking_server.folder / "secrets" / "postgres-password").read_text().strip()
    pg_port = json.loads((tracking_server.folder / "server.json").read_text())["pg_port"]
    database = f"external_{os.getpid()}"
    with psycopg.connect(
        host="127.0.0.1", port=pg_port, user="mlflow", password=password, dbname="postgres", autocommit=True
    ) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    folder = tmp_path / "server"
    stopped_afterwards.append(folder)
    backend = f"postgresql+psycopg://mlflow:{password}@127.0.0.1:{pg_port}/{database}"

    started = run_script(
        "up", "--dir", str(folder), "--port", str(free_port()), "--backend-store-uri", backend, "--workers", "1"
    )
    status = run_script("status", "--dir", str(folder))

    assert started.returncode == 0, started.stderr
    assert status.returncode == 0, status.stdout
    for output in (started.stdout, started.stderr, status.stdout, status.stderr):
        assert password not in output
    assert "mlflow:***@127.0.0.1" in status.stdout
    settings = folder / "server.json"
    assert password not in settings.read_text() and settings.stat().st_mode & 0o777 == 0o600
    for pid in pids_of(folder) or []:
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    server_pid = int((folder / "mlflow.pid").read_text().split()[0])
    assert password.encode() not in Path(f"/proc/{server_pid}/cmdline").read_bytes()

    # A folder of the earlier version: the whole URI in server.json, none in secrets/, a pid file without start time.
    assert run_script("down", "--dir", str(folder)).returncode == 0
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "backend_store_uri": backend}))
    (folder / "secrets" / "backend_store_uri").unlink()
    again = run_script("up", "--dir", str(folder))
    assert again.returncode == 0, again.stderr
    assert password not in settings.read_text() + again.stdout + again.stderr
    (folder / "mlflow.pid").write_text((folder / "mlflow.pid").read_text().split()[0] + "\n")
    assert run_script("status", "--dir", str(folder)).returncode == 0


def test_the_optuna_role_reaches_its_study_database_and_nothing_else(tracking_server: TrackingServer) -> None:
    import psycopg

    password = (tracking_server.folder / "secrets" / "optuna-password").read_text().strip()
    pg_port = json.loads((tracking_server.folder / "server.json").read_text())["pg_port"]
    login = {"host": "127.0.0.1", "port": pg_port, "user": "optuna", "password": password, "autocommit": True}

    with psycopg.connect(**login, dbname="optuna") as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS probe (id int)")
        connection.execute("DROP TABLE probe")
    for other in ("mlflow", "mlflow_auth", "postgres"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(**login, dbname=other)
    assert "sweeps: --optuna_storage" not in tracking_server.script("status").stdout
    assert "optuna store:  postgresql+psycopg://optuna@127.0.0.1" in tracking_server.script("status").stdout


# --- 5. folders that cannot hold a server, failed starts, the umask -------------------------------


@pytest.mark.parametrize("where", ["/proc/emotion-exp-server", "a-file/server"])
def test_a_folder_that_cannot_hold_a_server_gives_one_clear_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    folder = where if where.startswith("/") else str(tmp_path / where)

    result = run_script("up", "--dir", folder, "--port", str(free_port()), "--backend-store-uri", "sqlite:///x.db")

    no_traceback(result)
    assert "cannot use" in result.stderr and "pick a --dir on a writable disk that you own" in result.stderr


@pytest.fixture
def reachable_base() -> Iterator[Path]:
    """A temporary folder the postgres user can search (pytest's own are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="emotion-exp-defects-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
def test_a_failed_up_stops_the_postgresql_it_started(reachable_base: Path, stopped_afterwards) -> None:
    folder = reachable_base / "server"
    stopped_afterwards.append(folder)
    # A port no one may bind without privileges is not the point here: MLflow refuses a short admin password.
    result = run_script(
        "up",
        *("--dir", str(folder), "--port", str(free_port()), "--pg-port", str(free_port()), "--auth"),
        *("--workers", "1", "--timeout", "120"),
        env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "short"},
    )

    assert result.returncode == 1, result.stdout
    assert "mlflow server exited" in result.stderr
    assert pids_of(folder) == [], "a failed up left PostgreSQL running"


@pytest.mark.postgres
def test_up_on_a_pg_port_another_process_holds_refuses_before_anything_starts(reachable_base: Path) -> None:
    folder = reachable_base / "server"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        result = run_script("up", "--dir", str(folder), "--port", str(free_port()), "--pg-port", str(port))

    no_traceback(result)
    assert f"PostgreSQL's port {port} on 127.0.0.1" in result.stderr and "--pg-port" in result.stderr
    assert not (folder / "postgres").exists() and pids_of(folder) == []


@pytest.mark.postgres
def test_up_under_umask_077_makes_a_folder_postgresql_can_use(reachable_base: Path, stopped_afterwards) -> None:
    folder = reachable_base / "new" / "server"
    stopped_afterwards.append(folder)
    script = (
        f"umask 077 && {sys.executable} {SCRIPT} up --dir {folder} --port {free_port()} "
        f"--pg-port {free_port()} --workers 1"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    started = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=300, env=environment, check=False
    )

    assert started.returncode == 0, started.stderr
    assert run_script("status", "--dir", str(folder)).returncode == 0
    assert (folder.parent.stat().st_mode & 0o777) == 0o711 and (folder.stat().st_mode & 0o777) == 0o711


# --- sweeps on the server's PostgreSQL: the optuna role, masked storage, two workers on one study -------


def test_the_resume_hint_shows_the_storage_without_its_password() -> None:
    import optuna

    from emotion_exp.catalog import SweepConfig
    from emotion_exp.workflows.sweep import resume_hint

    config = SweepConfig(optuna_storage="postgresql+psycopg://optuna:hunter2-secret@127.0.0.1:5432/optuna")
    hint = resume_hint(config, "s", optuna.create_study())

    assert "hunter2-secret" not in hint and "--optuna_storage postgresql+psycopg://optuna:***@127.0.0.1:5432" in hint


def sweep_worker(
    server: TrackingServer, experiment: str, storage: str, study: str, dataset: Path, env: dict[str, str], trials: int
) -> subprocess.Popen:
    """`emotion-exp sweep` as a separate process (another machine's worker), logging to the team server."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "MLFLOW_EXPERIMENT_ID")}
    environment.update(server.credentials(), MLFLOW_TRACKING_URI=server.url, MLFLOW_EXPERIMENT_NAME=experiment, **env)
    command = [sys.executable, "-m", "emotion_exp", "sweep", "--dataset", str(dataset), "--stage", "tfidf"]
    command += ["--n_trials", str(trials), "--study_name", study, "--optuna_storage", storage, "--registered_model", ""]
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_password_in_the_optuna_storage_is_masked_in_the_param_and_tag(
    tracking_server: TrackingServer, small_dataset: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    password = (tracking_server.folder / "secrets" / "optuna-password").read_text().strip()
    pg_port = json.loads((tracking_server.folder / "server.json").read_text())["pg_port"]
    storage = f"postgresql+psycopg://optuna:{password}@127.0.0.1:{pg_port}/optuna"
    experiment, study = f"masked-{uuid.uuid4().hex[:8]}", f"masked-{uuid.uuid4().hex[:8]}"

    worker = sweep_worker(tracking_server, experiment, storage, study, small_dataset, {}, trials=1)
    output, _ = worker.communicate(timeout=600)

    assert worker.returncode == 0, output
    assert password not in output
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tracking_server.credentials().items():
            patch.setenv(key, value)
        client = MlflowClient(tracking_server.url)
        [parent] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "tags.stage = 'sweep'")
    for shown in (parent.data.params["optuna_storage"], parent.data.tags["optuna_storage"]):
        assert password not in shown and shown.startswith("postgresql+psycopg://optuna:***@127.0.0.1")
