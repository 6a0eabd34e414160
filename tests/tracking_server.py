"""A real team tracking server for the session: PostgreSQL, SeaweedFS and `mlflow server --app-name basic-auth`.

`deploy/tracking-server up --auth --object-store` starts them on free loopback ports in a fresh
temporary folder (never one left over from an earlier run), every artifact in SeaweedFS's S3 bucket,
so that each team-server test also runs against S3; `down` stops them at the end of the session,
also when tests failed, and the fixture checks that no process of theirs is left. Tests reach it with the
``on_server`` fixture, which points MLflow at it with the admin's credentials.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from emotion_exp.serving import free_port
from tests.conftest import REPO_ROOT

T = TypeVar("T")
SCRIPT = REPO_ROOT / "deploy" / "tracking-server"
ADMIN = "admin"


@dataclass(frozen=True)
class TrackingServer:
    url: str
    folder: Path
    admin_password: str

    def script(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `deploy/tracking-server` (``--dir`` added) with the admin's credentials in its environment."""
        return run_script(*args, "--dir", str(self.folder), env={**self.credentials(), **(env or {})})

    def credentials(self, username: str = ADMIN, password: str | None = None) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password if password is None else password,
        }

    def bucket_keys(self, prefix: str) -> list[str]:
        """The object keys under ``prefix`` in the server's S3 bucket, listed through the S3 API with DIR's keys."""
        pages = bucket_client(self.folder).get_paginator("list_objects_v2").paginate(Bucket="mlflow", Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def add_user(self, permission: str, *, experiment_id: str, registered_model: str) -> tuple[str, str]:
        """A new user with ``permission`` (READ, EDIT, ...) on the experiment and the registered model,
        made the way the README says; returns its name and password."""
        from mlflow.server import get_app_client

        username, password = f"user-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in self.credentials().items():
                patch.setenv(key, value)
            client = get_app_client("basic-auth", tracking_uri=self.url)
            client.create_user(username, password)
            client.grant_user_permission(username, "experiment", experiment_id, permission)
            client.grant_user_permission(username, "registered_model", registered_model, permission)
        self.hash_cheaply(username, password)
        return username, password

    def hash_cheaply(self, username: str, password: str) -> None:
        """Store the user's password hashed with one PBKDF2 round instead of werkzeug's scrypt.

        The server checks the password of every request, and scrypt costs 0.1-0.7 s of CPU each
        (0.68 s against 0.03 s per request at load 4.3, 2026-12-06): the team server's tests spent
        most of their time hashing. The same login check runs; only the hash is cheaper."""
        import configparser

        import sqlalchemy
        from werkzeug.security import generate_password_hash

        settings = configparser.ConfigParser()
        settings.read(self.folder / "secrets" / "basic_auth.ini")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PGPASSFILE", str(self.folder / "secrets" / "pgpass"))
            engine = sqlalchemy.create_engine(settings["mlflow"]["database_uri"])
            try:
                with engine.begin() as connection:
                    changed = connection.execute(
                        sqlalchemy.text("UPDATE users SET password_hash = :hash WHERE username = :name"),
                        {"hash": generate_password_hash(password, "pbkdf2:sha256:1"), "name": username},
                    ).rowcount
            finally:
                engine.dispose()
        assert changed == 1, f"no user {username!r} in the auth database"


def bucket_client(folder: Path):
    """A boto3 S3 client of the object store of the server in ``folder``, with the keys in its secrets."""
    import boto3

    settings = json.loads((folder / "server.json").read_text())
    keys = folder / "secrets"
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{settings['object_store']['s3.port']}",
        aws_access_key_id=(keys / "s3-access-key").read_text().strip(),
        aws_secret_access_key=(keys / "s3-secret-key").read_text().strip(),
        region_name="us-east-1",
    )


def run_script(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    # Not in pytest's name: MLflow's store runs extra checks when it sees PYTEST_CURRENT_TEST.
    environment = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    for client_setting in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        environment.pop(client_setting, None)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def each_process(read: Callable[[Path], T]) -> list[tuple[int, T]]:
    """``read`` of every process's /proc folder, with its pid; a process that ends while read is skipped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), read(entry)))
            except OSError:
                continue
    return found


def pids_of(folder: Path) -> list[int]:
    """Every process whose command line names the folder or that works in it (postmaster, weed, `mlflow server`)."""

    def command_and_cwd(entry: Path) -> tuple[bytes, str]:
        return (entry / "cmdline").read_bytes(), os.readlink(entry / "cwd")

    return [
        pid
        for pid, (command, cwd) in each_process(command_and_cwd)
        if str(folder).encode() in command or Path(cwd).is_relative_to(folder)
    ]


def session_commands(leader: int) -> list[str]:
    """The command line of every process in the session ``leader`` started (setsid)."""

    def session_and_command(entry: Path) -> tuple[int, bytes]:
        # The session id is the fourth field after the command name: state, ppid, pgrp, session.
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]), (entry / "cmdline").read_bytes()

    return [
        command.replace(b"\0", b" ").decode()
        for _, (session, command) in each_process(session_and_command)
        if session == leader
    ]


@pytest.fixture(scope="session")
def tracking_server() -> Iterator[TrackingServer]:
    """PostgreSQL and the MLflow server with logins, up for the session, in a temporary folder."""
    # Not under pytest's 0700 base folder: the postgres user must be able to reach its data folder.
    base = Path(tempfile.mkdtemp(prefix="emotion-exp-server-"))
    base.chmod(0o711)
    server = TrackingServer(
        url=f"http://127.0.0.1:{free_port()}", folder=base / "server", admin_password=secrets.token_urlsafe(16)
    )
    port = server.url.rsplit(":", 1)[1]
    try:
        started = server.script(
            "up", "--port", port, "--pg-port", str(free_port()), "--auth", "--object-store", "--workers", "2"
        )
        assert started.returncode == 0, f"deploy/tracking-server up failed:\n{started.stdout}\n{started.stderr}"
        server.hash_cheaply(ADMIN, server.admin_password)
        yield server
    finally:
        stopped = run_script("down", "--dir", str(server.folder))
        left = pids_of(server.folder)
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert left == [], f"deploy/tracking-server down left processes {left}"


@pytest.fixture
def on_server(tracking_server: TrackingServer, isolated_mlflow: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test logs to the session's tracking server as admin, in its own experiment; returns its name."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    for key, value in tracking_server.credentials().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(tracking_server.url)
    mlflow.set_experiment(isolated_mlflow)
    return isolated_mlflow
