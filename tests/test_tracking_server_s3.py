"""`deploy/tracking-server up --object-store`: artifacts in SeaweedFS's S3 bucket, its keys kept secret.

The session's server runs with `--object-store`, so every team-server test already goes through S3;
these check where the artifacts land, what `status` says, that the keys appear in no command line,
settings file or output, and that `down` (or a failed `up`) leaves no SeaweedFS running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests

from emotion_exp.serving import free_port
from tests.conftest import REPO_ROOT
from tests.pyfunc_models import LABELS, log_keyword_model
from tests.tracking_server import TrackingServer, bucket_client, each_process, pids_of, run_script

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
    # SeaweedFS's own: the JWT signing keys and the gRPC certificate's private key, in files of DIR/secrets only.
    weed_config = tracking_server.folder / "secrets" / "seaweedfs"
    signing_keys = re.findall(r'^key = "([^"/]+)"$', (weed_config / "security.toml").read_text(), re.MULTILINE)
    private_key = "".join((weed_config / "seaweedfs-key.pem").read_text().splitlines()[1:-1])
    assert len(signing_keys) == 4 and private_key
    for key in [*signing_keys, private_key[:40]]:
        assert key not in shown.replace("\n", "") and key not in json.dumps(settings)
    assert stat.S_IMODE(weed_config.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in weed_config.iterdir()} == {0o600}


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


# --- no door without a key (issue 36): every SeaweedFS port, tried as another local user -----------------

# A gRPC client's first bytes, then what it reads back: an HTTP/2 server answers the preface with a SETTINGS
# frame (type 4), so "settings" means the port spoke gRPC to this client. Standard library only: it runs
# under the system's python3 as `nobody`, who cannot reach this interpreter, and as root with a certificate.
GRPC_PROBE = r"""
import socket, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
try:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if mode != "plain":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        if mode == "certificate":
            context.load_cert_chain(sys.argv[3], sys.argv[4])
        sock = context.wrap_socket(sock)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    frame = sock.recv(9)
    print("settings" if len(frame) >= 4 and frame[3] == 4 else "refused")
except (OSError, ssl.SSLError):
    print("refused")
"""
as_root_only = pytest.mark.skipif(os.geteuid() != 0, reason="runs requests as the user nobody: needs root")


def as_nobody(*command: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *command],
        input=stdin, capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip


def status_for_nobody(method: str, url: str, *, body: str = "", form: bool = False) -> int:
    """The HTTP status another local user (nobody) gets for a request with no key (curl: no cookie, no token)."""
    command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "20", "-X", method, url]
    if form:
        command += ["-F", "file=@-;filename=note.txt"]
    elif body:
        command += ["--data-binary", "@-"]
    result = as_nobody(*command, stdin=body)
    return int(result.stdout.strip() or 0)


def page_for_nobody(url: str) -> tuple[int, str]:
    result = as_nobody("curl", "-s", "-m", "20", "-w", "\n%{http_code}", url)
    page, _, code = result.stdout.rpartition("\n")
    return int(code or 0), page


def weed(folder: Path, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`weed` as DIR's operator: its -config_dir holds the gRPC certificate the servers ask for."""
    command = [str(Path(sys.executable).parent / "weed"), f"-config_dir={folder / 'secrets' / 'seaweedfs'}"]
    return subprocess.run(
        [*command, *arguments], input=stdin, capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


def grpc_address(ports: dict[str, int], part: str) -> str:
    return f"127.0.0.1:{ports[f'{part}.port']}.{ports[f'{part}.port.grpc']}"


def file_id(folder: Path, ports: dict[str, int], path: str) -> str:
    """The volume file id of the filer entry ``path`` (its first chunk), read the operator's way."""
    shown = weed(
        folder, "shell", f"-master={grpc_address(ports, 'master')}", f"-filer={grpc_address(ports, 'filer')}",
        stdin=f"fs.meta.cat {path}\n",
    )  # fmt: skip
    found = re.search(r'"volumeId":\s*(\d+),\s*"fileKey":\s*"?(\d+)"?,\s*"cookie":\s*(\d+)', shown.stdout)
    assert found, shown.stdout[-2000:] + shown.stderr[-2000:]
    volume, key, cookie = map(int, found.groups())
    return f"{volume},{key:x}{cookie:08x}"


@pytest.fixture(scope="module")
def nobodys_weed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SeaweedFS's own client where `nobody` can run it (this interpreter's folder is root's only)."""
    folder = tmp_path_factory.mktemp("weed-for-nobody")
    for each in (folder, *folder.parents):
        if each != Path("/"):
            each.chmod(each.stat().st_mode | 0o005)  # searchable by others, as /tmp is
    copy = folder / "weed"
    try:
        os.link(Path(sys.executable).parent / "weed", copy)
    except OSError:  # another file system
        shutil.copy2(Path(sys.executable).parent / "weed", copy)
    return copy


@as_root_only
def test_no_seaweedfs_port_lists_reads_writes_or_deletes_without_the_keys(
    tracking_server: TrackingServer, on_server: str, nobodys_weed: Path
) -> None:
    text = f"written by the admin through MLflow ({uuid.uuid4().hex})"
    with mlflow.start_run() as run:
        mlflow.log_text(text, "notes/guarded.txt")
    key = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/notes/guarded.txt"
    ports = json.loads((tracking_server.folder / "server.json").read_text())["object_store"]
    filer, master, volume = (f"http://127.0.0.1:{ports[f'{part}.port']}" for part in ("filer", "master", "volume"))
    s3 = f"http://127.0.0.1:{ports['s3.port']}"
    artifact_fid = file_id(tracking_server.folder, ports, f"/buckets/mlflow/{key}")
    uploaded = weed(tracking_server.folder, "upload", f"-master={grpc_address(ports, 'master')}", "/etc/hostname")
    assert uploaded.returncode == 0, uploaded.stderr  # a blob the master handed out to the operator, by gRPC
    handed_out = json.loads(uploaded.stdout)[0]["fid"]

    # Reads first, then writes, then deletes: the test stops at the first request answered, before the next does harm.
    tried = {
        "filer: list the run": ("GET", f"{filer}/buckets/mlflow/{run.info.experiment_id}/?limit=100", {}),
        "filer: read the artifact": ("GET", f"{filer}/buckets/mlflow/{key}", {}),
        "master: look a file id up": ("GET", f"{master}/dir/lookup?fileId={artifact_fid}", {}),
        "volume: read the artifact": ("GET", f"{volume}/{artifact_fid}", {}),
        "volume: read the handed-out file id": ("GET", f"{volume}/{handed_out}", {}),
        "s3: list the bucket": ("GET", f"{s3}/mlflow?list-type=2", {}),
        "s3: read the artifact": ("GET", f"{s3}/mlflow/{key}", {}),
        "filer: replace the artifact": ("PUT", f"{filer}/buckets/mlflow/{key}", {"body": "tampered"}),
        "filer: upload beside it": ("POST", f"{filer}/buckets/mlflow/{run.info.experiment_id}/", {"form": True}),
        "master: assign a file id": ("GET", f"{master}/dir/assign", {}),
        "master: submit a file": ("POST", f"{master}/submit", {"form": True}),
        "master: grow volumes": ("GET", f"{master}/vol/grow?count=1", {}),
        "volume: overwrite the artifact": ("POST", f"{volume}/{artifact_fid}", {"form": True}),
        "volume: write the handed-out file id": ("POST", f"{volume}/{handed_out}", {"form": True}),
        "s3: replace the artifact": ("PUT", f"{s3}/mlflow/{key}", {"body": "tampered"}),
        "filer: delete the artifact": ("DELETE", f"{filer}/buckets/mlflow/{key}", {}),
        "filer: delete the bucket": ("DELETE", f"{filer}/buckets/mlflow/?recursive=true", {}),
        "master: delete the bucket's collection": ("GET", f"{master}/col/delete?collection=mlflow", {}),
        "volume: delete the artifact": ("DELETE", f"{volume}/{artifact_fid}", {}),
        "volume: delete the handed-out file id": ("DELETE", f"{volume}/{handed_out}", {}),
        "s3: delete the artifact": ("DELETE", f"{s3}/mlflow/{key}", {}),
    }
    for what, (method, url, how) in tried.items():
        answer = status_for_nobody(method, url, **how)
        assert 400 <= answer < 500, f"{what}: answered {answer} to another local user without a key"

    # gRPC: SeaweedFS's own clients, and a bare HTTP/2 client with and without TLS, get nothing on any gRPC port.
    filer_grpc = f"-filer={grpc_address(ports, 'filer')}"
    tail = as_nobody("timeout", "20", str(nobodys_weed), "filer.meta.tail", filer_grpc, "-timeAgo=24h")
    upload = as_nobody(str(nobodys_weed), "upload", f"-master={grpc_address(ports, 'master')}", "/etc/hostname")
    # Without its certificate the metadata stream names nothing (unguarded, it streams every entry's path and name).
    assert "guarded.txt" not in tail.stdout + tail.stderr and run.info.run_id not in tail.stdout, tail.stdout[-2000:]
    assert upload.returncode != 0 and '"fid"' not in upload.stdout, upload.stdout
    certificate = tracking_server.folder / "secrets" / "seaweedfs"
    for part in ("master", "volume", "filer", "s3"):
        port = str(ports[f"{part}.port.grpc"])
        for mode in ("plain", "tls"):
            assert as_nobody("python3", "-c", GRPC_PROBE, port, mode).stdout.strip() == "refused", (part, mode)
        with_key = [sys.executable, "-c", GRPC_PROBE, port, "certificate"]
        with_key += [str(certificate / "seaweedfs.pem"), str(certificate / "seaweedfs-key.pem")]
        answer = subprocess.run(with_key, capture_output=True, text=True, timeout=60, check=False).stdout.strip()
        assert answer == "settings", f"the probe gets no answer from {part}'s gRPC port even with the certificate"

    # What stays readable: the status pages (topology and disk figures), with no object's name in them.
    for page_url in (f"{master}/", f"{volume}/status"):
        code, page = page_for_nobody(page_url)
        assert code == 200 and run.info.run_id not in page and "guarded" not in page, (page_url, code)
    # The keys' way still works, and the artifact is the admin's, unchanged.
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/guarded.txt") == text
    assert tracking_server.bucket_keys(f"{run.info.experiment_id}/{run.info.run_id}/") == [key]
    with mlflow.start_run() as later:
        mlflow.log_text("still logged", "notes/later.txt")
    assert mlflow.artifacts.load_text(f"runs:/{later.info.run_id}/notes/later.txt") == "still logged"


@pytest.mark.postgres
def test_status_and_backup_tell_a_bucket_deleted_under_a_running_server() -> None:
    base = Path(tempfile.mkdtemp(prefix="emotion-exp-bucket-"))
    base.chmod(0o711)  # the postgres user reaches its data folder
    folder = base / "server"
    port = free_port()
    try:
        up = run_script("up", "--dir", str(folder), "--object-store", "--port", str(port), "--workers", "1")
        assert up.returncode == 0, up.stderr
        assert "bucket mlflow found" in run_script("status", "--dir", str(folder)).stdout
        bucket_client(folder).delete_bucket(Bucket="mlflow")

        # An upload through the server's artifact proxy fails: SeaweedFS makes no new bucket behind its back.
        upload = requests.put(f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/0/x.txt", b"x", timeout=60)
        assert upload.status_code >= 500, upload.text
        assert "mlflow" not in [bucket["Name"] for bucket in bucket_client(folder).list_buckets()["Buckets"]]
        status = run_script("status", "--dir", str(folder))
        backup = run_script("backup", "--dir", str(folder), "--to", str(base / "backup.tar.gz"))
        assert run_script("down", "--dir", str(folder)).returncode == 0
        again = run_script("up", "--dir", str(folder), "--workers", "1")

        assert status.returncode == 1, status.stdout
        assert "object store:  SeaweedFS running" in status.stdout and "bucket mlflow NOT FOUND" in status.stdout
        assert "the bucket mlflow is missing" in status.stdout
        assert backup.returncode == 0, backup.stderr
        assert "WARNING: the bucket mlflow is missing" in backup.stderr and "0 artifacts" in backup.stdout
        assert again.returncode == 0, again.stderr
        assert "WARNING: the bucket mlflow was missing" in again.stderr and "made a new, empty one" in again.stderr
        assert run_script("status", "--dir", str(folder)).returncode == 0
    finally:
        run_script("down", "--dir", str(folder))
        left = pids_of(folder)
        shutil.rmtree(base, ignore_errors=True)
    assert left == []
