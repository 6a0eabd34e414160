"""`deploy/tracking-server backup`, `restore` and `upgrade` against the session's real team server.

One archive of the running server (its artifacts read from its object store's bucket) is restored
into a new folder, with an object store of its own, and brought `up` once: every run, metric,
artifact (in the new bucket), registered version, alias, user and permission is found there, and
the champion loads from it. `upgrade` is a no-op on a current folder, refuses while the server runs on an older
schema and migrates it once stopped. A tampered archive is refused before anything is made, and so are
archives crafted to write outside the new folder (`artifacts//tmp/x`, names that are not normal, a link on
the way).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from emotion_exp.serving import free_port
from tests.conftest import REPO_ROOT
from tests.pyfunc_models import log_keyword_model
from tests.tracking_server import ADMIN, TrackingServer, pids_of, run_script

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:An input example was not provided")]
NOTE = "kept across a backup"
NOTE_PATH = "notes/note.txt"
DOCS = REPO_ROOT / "docs" / "team-server.md"


@dataclass(frozen=True)
class Archived:
    """What was logged on the session's server before `backup` wrote ``archive``."""

    server: TrackingServer
    archive: Path
    experiment_id: str
    run_id: str
    model: str
    version: str
    user: tuple[str, str]


@pytest.fixture(scope="module")
def archived(tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    with pytest.MonkeyPatch.context() as patch:
        login(patch, tracking_server.url, ADMIN, tracking_server.admin_password)
        experiment_id = MlflowClient().create_experiment(f"backup-{uuid.uuid4().hex[:8]}")
        model = f"backup-{uuid.uuid4().hex[:8]}"
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_params({"alpha": "0.5", "engine": "keyword"})
            for step, value in enumerate((0.5, 0.75)):
                mlflow.log_metric("f1_macro", value, step=step)
            model_uri = log_keyword_model(input_example=False)
            mlflow.log_text(NOTE, NOTE_PATH)
        version = mlflow.register_model(model_uri, model).version
        MlflowClient().set_registered_model_alias(model, "champion", version)
    user = tracking_server.add_user("READ", experiment_id=experiment_id, registered_model=model)
    archive = tmp_path_factory.mktemp("backup") / "team-server.tar.gz"

    backup = docs_command("backup", {"/srv/mlflow": tracking_server.folder, "/backups/mlflow.tar.gz": archive})
    result = run_script(*backup)

    assert result.returncode == 0, result.stderr
    assert f"backed up {tracking_server.folder} to {archive}" in result.stdout
    yield Archived(tracking_server, archive, experiment_id, run.info.run_id, model, version, user)


def docs_command(name: str, paths: dict[str, object]) -> list[str]:
    """The arguments of the `deploy/tracking-server NAME` line of the backup block in docs/team-server.md,
    with its example paths replaced by ``paths``."""
    test = "test_a_restored_server_holds_every_run_model_user_and_permission"
    mark = f"<!-- run by: tests/test_tracking_server_backup.py::{test} -->"
    block = DOCS.read_text().split(mark, 1)[1].split("```", 2)[1]
    lines = [shlex.split(line) for line in block.splitlines() if line.startswith("deploy/tracking-server ")]
    arguments = next(words[1:] for words in lines if words[1] == name)
    return [str(paths.get(word, word)) for word in arguments]


def login(patch: pytest.MonkeyPatch, url: str, username: str, password: str) -> None:
    patch.setenv("MLFLOW_TRACKING_URI", url)
    patch.setenv("MLFLOW_TRACKING_USERNAME", username)
    patch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    mlflow.set_tracking_uri(url)


@pytest.fixture
def new_folder() -> Iterator[Path]:
    """A folder for a restored server that the postgres user can reach; whatever runs in it is stopped after."""
    base = Path(tempfile.mkdtemp(prefix="emotion-exp-restore-"))
    base.chmod(0o711)
    folder = base / "restored"
    try:
        yield folder
    finally:
        stopped = run_script("down", "--dir", str(folder))
        left = pids_of(folder)
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert left == [], f"processes left in {folder}: {left}"


def test_the_archive_is_private_and_its_manifest_lists_both_databases_and_every_artifact(archived: Archived) -> None:
    assert stat.S_IMODE(archived.archive.stat().st_mode) == 0o600
    manifest = manifest_of(archived.archive)
    with tarfile.open(archived.archive, "r:gz") as tar:
        digests = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}

    assert manifest["databases"] == ["mlflow", "mlflow_auth"]
    assert manifest["mlflow_version"] == mlflow.__version__ and manifest["postgresql_version"][:2].isdigit()
    assert manifest["settings"]["auth"] is True and manifest["settings"]["admin_username"] == ADMIN
    note = next(name for name in manifest["members"] if name.endswith(f"{archived.run_id}/artifacts/{NOTE_PATH}"))
    assert manifest["artifacts"]["source"] == "bucket" and manifest["artifacts"]["objects"] >= 2
    assert digests.pop("manifest.json") and digests == manifest["members"] and note in digests
    secret_files = [path for path in (archived.server.folder / "secrets").rglob("*") if path.is_file()]
    tar_bytes = gzip.decompress(archived.archive.read_bytes())  # the dumps' data is compressed again by pg_dump
    assert not any(path.read_bytes().strip() in tar_bytes for path in secret_files), "a file of DIR/secrets is archived"


def test_a_restored_server_holds_every_run_model_user_and_permission(archived: Archived, new_folder: Path) -> None:
    from mlflow.server import get_app_client  # the server's app: seconds to import, for this test only

    paths = {"/backups/mlflow.tar.gz": archived.archive, "/srv/mlflow-restored": new_folder}
    restored = run_script(*docs_command("restore", paths))
    assert restored.returncode == 0, restored.stderr
    assert f"start it: deploy/tracking-server up --dir {new_folder}" in restored.stdout
    assert "the users log in as before" in restored.stdout and "WARNING" not in restored.stderr
    assert "logins on (admin 'admin', default permission NO_PERMISSIONS)" in restored.stdout
    again = run_script("restore", "--from", str(archived.archive), "--dir", str(new_folder))
    assert again.returncode == 1 and "already holds a tracking server" in again.stderr

    url = f"http://127.0.0.1:{free_port()}"  # the admin exists: `up` needs no credentials
    started = run_script(*docs_command("up", {**paths, "5001": url.rsplit(":", 1)[1]}), "--workers", "1")
    assert started.returncode == 0, started.stderr
    check_a_bucket_of_its_own(archived, TrackingServer(url, new_folder, archived.server.admin_password))

    with pytest.MonkeyPatch.context() as patch:
        login(patch, url, ADMIN, archived.server.admin_password)
        client = MlflowClient()
        run = client.get_run(archived.run_id)
        assert run.data.params.items() >= {"alpha": "0.5", "engine": "keyword"}.items()
        assert [m.value for m in client.get_metric_history(archived.run_id, "f1_macro")] == [0.5, 0.75]
        assert mlflow.artifacts.load_text(f"runs:/{archived.run_id}/{NOTE_PATH}") == NOTE
        assert client.get_registered_model(archived.model).aliases == {"champion": archived.version}
        champion = mlflow.pyfunc.load_model(f"models:/{archived.model}@champion")
        assert champion.predict(["i am so happy"])["label"].tolist() == ["joy"]
        users = get_app_client("basic-auth", tracking_uri=url)
        username, password = archived.user
        assert users.get_user(username).username == username
        assert users.get_user_permission(username, "experiment", archived.experiment_id).permission == "READ"
        assert users.get_user_permission(username, "registered_model", archived.model).permission == "READ"
        login(patch, url, username, password)  # the user's password survived with its hash
        assert MlflowClient().get_run(archived.run_id).info.run_id == archived.run_id

    check_upgrade(new_folder)
    check_backup_of_a_stopped_server(new_folder, archived.archive)


def check_a_bucket_of_its_own(archived: Archived, restored: TrackingServer) -> None:
    """The restored server's artifacts are in the bucket of its own object store, reached with new keys at new ports."""
    prefix = f"{archived.experiment_id}/{archived.run_id}/"
    assert f"{prefix}artifacts/{NOTE_PATH}" in restored.bucket_keys(prefix)
    assert restored.bucket_keys(prefix) == archived.server.bucket_keys(prefix)
    ports = [json.loads((s.folder / "server.json").read_text())["object_store"] for s in (archived.server, restored)]
    assert not set(ports[0].values()) & set(ports[1].values())
    keys = [(s.folder / "secrets" / "s3-secret-key").read_text() for s in (archived.server, restored)]
    assert keys[0] != keys[1]


def check_backup_of_a_stopped_server(folder: Path, first: Path) -> None:
    """`backup` of a stopped server starts its PostgreSQL and stops it again; the artifacts make the round trip."""
    assert run_script("down", "--dir", str(folder)).returncode == 0
    second = folder.parent / "second.tar.gz"

    result = run_script("backup", "--dir", str(folder), "--to", str(second))

    assert result.returncode == 0, result.stderr
    assert pids_of(folder) == []
    artifacts = [
        {name: digest for name, digest in manifest_of(archive)["members"].items() if name.startswith("artifacts/")}
        for archive in (first, second)
    ]
    assert artifacts[0] and artifacts[1] == artifacts[0]


def manifest_of(archive: Path) -> dict:
    with tarfile.open(archive, "r:gz") as tar:
        return json.loads(tar.extractfile("manifest.json").read())


def check_upgrade(folder: Path) -> None:
    """No-op when current; with the user database one revision back: refused while up, migrated once stopped."""
    current = run_script("upgrade", "--dir", str(folder))
    assert current.returncode == 0, current.stderr
    assert "already current" in current.stdout and "nothing to do" in current.stdout

    head, previous = downgrade_user_database(folder)
    refused = run_script("upgrade", "--dir", str(folder))
    assert refused.returncode == 1 and "--keep-postgres" in refused.stderr and "Traceback" not in refused.stderr
    assert run_script("down", "--dir", str(folder), "--keep-postgres").returncode == 0
    migrated = run_script("upgrade", "--dir", str(folder))
    assert migrated.returncode == 0, migrated.stderr
    assert f"user database: upgraded from {previous} to {head}" in migrated.stdout
    assert "tracking database" not in migrated.stdout  # it was current: left alone


def downgrade_user_database(folder: Path) -> tuple[str, str]:
    """Take the user database one migration back (as an older MLflow left it); returns its head and that revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    migrations = Path(mlflow.__file__).parent / "server" / "auth" / "db" / "migrations"
    settings = json.loads((folder / "server.json").read_text())
    password = (folder / "secrets" / "postgres-password").read_text().strip()
    config = Config(str(migrations / "alembic.ini"))
    config.set_main_option("script_location", str(migrations))
    uri = f"postgresql+psycopg://mlflow:{password}@127.0.0.1:{settings['pg_port']}/mlflow_auth"
    config.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    head = ScriptDirectory.from_config(config).get_current_head()
    command.downgrade(config, "-1")
    return head, ScriptDirectory.from_config(config).get_revision(head).down_revision


def test_a_tampered_archive_is_refused_before_anything_is_made(archived: Archived, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archived.archive, "r:gz") as source, tarfile.open(tampered, "w:gz") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith(NOTE_PATH):
                data = data.replace(b"kept", b"lost")
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    folder = tmp_path / f"restored-{secrets.token_hex(4)}"

    result = run_script("restore", "--from", str(tampered), "--dir", str(folder))

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "does not match its checksum in the manifest" in result.stderr and NOTE_PATH in result.stderr
    assert not folder.exists()


# --- archives made to attack `restore` (issue 36) ---------------------------------------------------------


SETTINGS = {
    "host": "127.0.0.1",
    "port": 5000,
    "pg_port": 5432,
    "backend_store_uri": None,
    "auth_database_uri": None,
    "artifacts_destination": "/srv/mlflow/artifacts",
    "workers": 4,
    "auth": True,
    "default_permission": "NO_PERMISSIONS",
    "object_store": None,
    "admin_username": "admin",
    "admin_created": True,
}


def crafted_archive(path: Path, artifacts: dict[str, bytes], **settings: object) -> Path:
    """An archive as `backup` writes one (format 1, both databases, every member with its right sha256), holding
    ``artifacts`` under the names given and a manifest with ``settings`` over SETTINGS: what an attacker who can
    write an archive makes. Its dumps are not PostgreSQL's: whatever restore writes before pg_restore stays."""
    members = {f"databases/{name}.dump": b"not a dump" for name in ("mlflow", "mlflow_auth")} | artifacts
    manifest = {
        "format": 1,
        "created": "2026-12-07T00:00:00+00:00",
        "mlflow_version": mlflow.__version__,
        "postgresql_version": "15.0",
        "settings": {**SETTINGS, **settings},
        "databases": ["mlflow", "mlflow_auth"],
        "artifacts": {"source": "folder", "objects": len(artifacts), "bytes": sum(map(len, artifacts.values()))},
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [*members.items(), ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def refused_before_anything(result: subprocess.CompletedProcess, folder: Path, *shown: str) -> None:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "nothing was restored" in result.stderr, result.stderr
    for text in shown:
        assert text in result.stderr, result.stderr
    assert not folder.exists(), f"restore made {folder}"


@pytest.mark.parametrize("top", ["artifacts", "databases"])
def test_a_member_named_with_a_double_slash_is_refused_before_anything_is_written(
    top: str, new_folder: Path, tmp_path: Path
) -> None:
    planted = tmp_path / "planted" / "x"  # what `artifacts//tmp/x` names: an absolute path once split at its first /
    name = f"{top}/{planted}"
    assert "//" in name
    archive = crafted_archive(tmp_path / "crafted.tar.gz", {name: b"planted by an archive"})

    result = run_script("restore", "--from", str(archive), "--dir", str(new_folder))

    refused_before_anything(result, new_folder, repr(name))
    assert not planted.parent.exists(), "restore wrote outside its --dir"


@pytest.mark.parametrize(
    "name",
    ["artifacts/1/./x", "artifacts/1//x", "artifacts/1/x/", "artifacts/1/../x", "artifacts/..", "artifacts"],
)
def test_a_member_name_that_is_not_normal_is_refused(name: str, new_folder: Path, tmp_path: Path) -> None:
    archive = crafted_archive(tmp_path / "crafted.tar.gz", {name: b"data"})

    result = run_script("restore", "--from", str(archive), "--dir", str(new_folder))

    refused_before_anything(result, new_folder, repr(name))


def test_an_artifacts_folder_that_leads_elsewhere_is_refused_before_anything_is_written(
    new_folder: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    new_folder.mkdir(mode=0o711)
    (new_folder / "artifacts").symlink_to(elsewhere)  # an empty --dir, but for this link
    archive = crafted_archive(tmp_path / "crafted.tar.gz", {"artifacts/1/run/artifacts/x": b"through a link"})

    result = run_script("restore", "--from", str(archive), "--dir", str(new_folder))

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{new_folder / 'artifacts'}" in result.stderr and "outside" in result.stderr, result.stderr
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in new_folder.iterdir()) == ["artifacts"]


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        ({"backend_store_uri": "postgresql://mlflow@db.example.org/mlflow"}, "backend_store_uri"),
        ({"default_permission": "EVERYTHING"}, "default_permission"),
        ({"port": 99999}, "port"),
        ({"auth": "yes"}, "auth"),
        ({"run_as": "root"}, "run_as"),
    ],
    ids=["external-database", "permission", "port", "auth-not-a-boolean", "unknown"],
)
def test_archived_settings_restore_cannot_apply_are_refused(
    settings: dict, shown: str, new_folder: Path, tmp_path: Path
) -> None:
    archive = crafted_archive(tmp_path / "crafted.tar.gz", {}, **settings)

    result = run_script("restore", "--from", str(archive), "--dir", str(new_folder))

    refused_before_anything(result, new_folder, shown)


@pytest.mark.parametrize("port", ["taken", "70000", "80"])
def test_a_pg_port_that_cannot_be_used_is_refused_before_anything_starts(
    port: str, new_folder: Path, tmp_path: Path
) -> None:
    archive = crafted_archive(tmp_path / "crafted.tar.gz", {})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        number = str(holder.getsockname()[1]) if port == "taken" else port

        result = run_script("restore", "--from", str(archive), "--dir", str(new_folder), "--pg-port", number)

    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert number in result.stderr and "Examine the log output" not in result.stderr, result.stderr
    assert not new_folder.exists()


def test_archived_settings_that_open_the_server_are_shown_with_a_warning(
    archived: Archived, new_folder: Path, tmp_path: Path
) -> None:
    """The manifest is outside the checksums: logins turned off and another host, edited into it, are restored
    only with a warning, and restore no longer says the users log in as before."""
    edited = tmp_path / "edited.tar.gz"
    with tarfile.open(archived.archive, "r:gz") as source, tarfile.open(edited, "w:gz") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest["settings"] |= {"auth": False, "host": "0.0.0.0"}
                data = json.dumps(manifest).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))

    result = run_script("restore", "--from", str(edited), "--dir", str(new_folder))

    assert result.returncode == 0, result.stderr
    assert "settings from the archive (its checksums do not cover them):" in result.stdout
    assert "MLflow server on 0.0.0.0:" in result.stdout and "logins OFF" in result.stdout
    assert "WARNING: the archive's settings turn logins off" in result.stderr
    assert "WARNING: the archive's settings bind the MLflow server to 0.0.0.0" in result.stderr
    assert "log in as before" not in result.stdout and "logins are off" in result.stdout
    restored = json.loads((new_folder / "server.json").read_text())
    assert (restored["auth"], restored["host"]) == (False, "0.0.0.0")  # what was shown is what was restored
