"""`mlflow server` of DIR: in its own session, the database URI and keys by environment, proxied artifacts."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import SetupError
from .layout import Layout
from .postgres import AUTH_DB, PG_USER, TRACKING_DB, database_uri
from .private_files import secret, tail, write_secret
from .processes import listens, record_pid, recorded_pid, start_in_session, stop_group
from .settings import external_uri, url_of

HEALTH_TIMEOUT_S = 180
STARLETTE_WSGI_WARNING = "ignore:starlette.middleware.wsgi is deprecated"
TRUST_WARNING = (
    "WARNING: the tracking server listens on {host} without --auth: anyone who can reach the port can read "
    "every run and artifact and write runs, models and aliases (and a model they register is code that "
    "`predict` and `serve` unpickle). See SECURITY.md; add --auth or keep it on 127.0.0.1."
)


def mlflow_pid(layout: Layout, port: int) -> int | None:
    """The recorded server pid, when that process is still this folder's `mlflow server` on ``port``."""
    return recorded_pid(layout.mlflow_pid, layout.root, "server", str(port))


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def admin_credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    username = os.environ.get("MLFLOW_TRACKING_USERNAME") or None
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or None
    if args.admin_password_file:
        password = Path(args.admin_password_file).read_text().strip() or None
    return username, password


def auth_environment(args: argparse.Namespace, layout: Layout, settings: dict) -> dict[str, str]:
    """The basic-auth app's configuration: its ini file, secret key and (first `up`) the admin."""
    username, password = admin_credentials(args)
    username = username or settings.get("admin_username")
    first = not settings.get("admin_created")
    if not username or (first and not password):
        raise SetupError(
            "--auth needs the admin's credentials at the first `up`: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or pass --admin-password-file FILE); there is no default password."
        )
    if not first:
        # The admin exists: the password is not needed again, and other credentials are a client's, not a new admin.
        username, password = settings["admin_username"], None
    auth_db = external_uri(layout, settings, "auth_database_uri") or database_uri(settings["pg_port"], AUTH_DB)
    write_secret(
        layout.auth_ini,
        "[mlflow]\n"
        f"default_permission = {settings['default_permission']}\n"
        f"database_uri = {auth_db}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    settings["admin_username"] = username
    environment = {
        "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret(layout.flask_key),
        "MLFLOW_AUTH_ADMIN_USERNAME": username,
    }
    if password:
        environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    return environment


def start_mlflow(layout: Layout, settings: dict, extra: dict[str, str], timeout: int) -> int:
    """Start `mlflow server` in its own session (setsid) and wait until /health answers from it."""
    backend = external_uri(layout, settings, "backend_store_uri") or database_uri(settings["pg_port"], TRACKING_DB)
    environment = {
        **os.environ,
        # MLflow 3 otherwise starts a job runner with 7 workers (about 1.25 GB) this project never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # MLflow's own import of starlette.middleware.wsgi warns in every worker, nothing an operator can act on;
        # the operator's PYTHONWARNINGS come after, so they win.
        "PYTHONWARNINGS": ",".join(filter(None, [STARLETTE_WSGI_WARNING, os.environ.get("PYTHONWARNINGS")])),
    }
    # The operator's client settings and credentials stay out of the long-lived server's environment.
    for client_only in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_AUTH_ADMIN_USERNAME",
    ):
        environment.pop(client_only, None)
    if settings["backend_store_uri"] is None:
        write_secret(layout.pgpass, f"127.0.0.1:{settings['pg_port']}:*:{PG_USER}:{secret(layout.pg_password)}\n")
        environment["PGPASSFILE"] = str(layout.pgpass)
    environment.update(extra)
    # Through the environment, not argv: a password in the URI is not shown by `ps` to every local user.
    environment["MLFLOW_BACKEND_STORE_URI"] = backend
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--artifacts-destination",
        settings["artifacts_destination"],
        "--host",
        settings["host"],
        "--port",
        str(settings["port"]),
        "--workers",
        str(settings["workers"]),
    ]
    if settings["auth"]:
        command += ["--app-name", "basic-auth"]
    if not settings["artifacts_destination"].startswith(("s3://", "gs://", "wasbs://", "hdfs://")):
        # Only the server reads them: other local users go through its logins like everyone else.
        Path(settings["artifacts_destination"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    process = start_in_session(command, layout.mlflow_log, layout.root, environment)
    record_pid(layout.mlflow_pid, process.pid)
    url = url_of(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            layout.mlflow_pid.unlink(missing_ok=True)
            raise SetupError(
                f"mlflow server exited with {process.returncode}; its log ends:\n{tail(layout.mlflow_log)}"
            )
        if healthy(url) and listens(process.pid, settings["port"]):
            return process.pid
        time.sleep(0.5)
    stop_group(process.pid)
    layout.mlflow_pid.unlink(missing_ok=True)
    raise SetupError(
        f"mlflow server did not answer {url}/health within {timeout} s; its log ends:\n{tail(layout.mlflow_log)}"
    )
