"""`backup`, `restore` and `upgrade` of a team tracking server made by `deploy/tracking-server up`.

    deploy/tracking-server backup  --dir DIR --to FILE
    deploy/tracking-server restore --from FILE --dir NEWDIR [--pg-port PORT]
    deploy/tracking-server upgrade --dir DIR

The archive (tar.gz, mode 0600: the user database holds the users' password hashes) holds
`manifest.json`, a `pg_dump` (custom format) of the tracking and user databases
(`databases/<name>.dump`) and every artifact (`artifacts/<path>`: a file of DIR/artifacts, or an
object of the `up --object-store` bucket by its key); the manifest gives the sha256 of each member,
which `restore` checks before it makes anything. Secrets are not in it: `restore` generates new ones
(docs/team-server.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import SetupError
from .layout import Layout
from .mlflow_server import HEALTH_TIMEOUT_S, mlflow_pid
from .object_store import (
    BUCKET,
    MISSING_BUCKET,
    bucket_found,
    make_bucket,
    object_store_ports,
    s3_client,
    s3_endpoint,
    start_seaweedfs,
    stop_seaweedfs,
    weed_pid,
)
from .postgres import (
    AUTH_DB,
    PG_USER,
    TRACKING_DB,
    check_pg_port,
    create_databases,
    database_uri,
    init_postgres,
    postgres_bin,
    postgres_pid,
    start_postgres,
    stop_postgres,
)
from .private_files import make_folder, secret
from .processes import HIGHEST_PORT, free_port
from .settings import PERMISSIONS, external_uri, load_settings, loopback, mask_password, save_settings

MANIFEST = "manifest.json"


def is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= HIGHEST_PORT


# server.json's settings as `up` writes them for a server `backup` archives, each with the check its value passes.
SETTING_CHECKS: dict[str, Callable[[object], bool]] = {
    "host": lambda value: isinstance(value, str) and re.fullmatch(r"[0-9A-Za-z.:-]+", value) is not None,
    "port": is_port,
    "pg_port": lambda value: value is None or is_port(value),
    "backend_store_uri": lambda value: value is None,  # backup refuses a server on an external database
    "auth_database_uri": lambda value: value is None,
    "artifacts_destination": lambda value: isinstance(value, str) and value != "",
    "workers": lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 1,
    "auth": lambda value: isinstance(value, bool),
    "default_permission": lambda value: value in PERMISSIONS,
    "object_store": lambda value: value is None or isinstance(value, dict),  # restore picks new ports
    "admin_username": lambda value: isinstance(value, str) and value != "",
    "admin_created": lambda value: isinstance(value, bool),
}
REQUIRED_SETTINGS = ("host", "port", "artifacts_destination", "workers", "auth", "default_permission")
FORMAT = 1
DATABASES = (TRACKING_DB, AUTH_DB)
CHUNK = 1 << 20
# folder: DIR/artifacts; bucket: the S3 bucket of `up --object-store` (read and refilled through its S3 API);
# external: an operator's own s3:// (or other) destination, not archived.
ARTIFACT_SOURCES = ("folder", "bucket", "external")
# label: (migrations folder inside the mlflow package, alembic's version table, the command that migrates)
SCHEMAS = {
    "tracking database": ("store/db_migrations", "alembic_version", ["-m", "mlflow", "db", "upgrade"]),
    "user database": (
        "server/auth/db/migrations",
        "alembic_version_auth",
        ["-m", "mlflow.server.auth", "db", "upgrade", "--url"],
    ),
}
REVISIONS = """
import importlib.util, json, os
from pathlib import Path
import sqlalchemy
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
package = Path(importlib.util.find_spec("mlflow").submodule_search_locations[0])
found = {}
for label, (uri, password, folder, table) in json.loads(os.environ.pop("TRACKING_SERVER_SCHEMAS")).items():
    if password is None:
        os.environ.pop("PGPASSWORD", None)
    else:
        os.environ["PGPASSWORD"] = password  # libpq reads it when it connects
    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection, opts={"version_table": table}).get_current_revision()
    engine.dispose()
    found[label] = [current, ScriptDirectory(str(package / folder)).get_current_head()]
print(json.dumps(found))
"""


# ---------------------------------------------------------------- backup


def backup(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    settings = managed_settings(layout)
    target = Path(args.to).absolute()
    if not target.parent.is_dir():
        raise SetupError(f"cannot write {target}: {target.parent} is not a folder; create it or pick another --to.")
    source = artifact_source(settings)
    with running_postgres(layout, settings), running_object_store(layout, settings, source):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))  # mode 0700: dumps are private
        try:
            manifest = write_archive(layout, settings, source, target, staging)
        finally:
            shutil.rmtree(staging)
    artifacts = manifest["artifacts"]
    where = f" (from the bucket {BUCKET} of its object store)" if source == "bucket" else ""
    print(
        f"backed up {layout.root} to {target} (mode 0600: it holds the users' password hashes): databases "
        f"{', '.join(DATABASES)}; {artifacts['objects']} artifacts{where}, {artifacts['bytes']} bytes"
    )
    if source == "external":
        print(
            f"the artifacts in {settings['artifacts_destination']} are not in the archive: back them up with that "
            "store's own tools."
        )
    return 0


def write_archive(layout: Layout, settings: dict, source: str, target: Path, staging: Path) -> dict:
    """The archive, written to a temporary file (mode 0600) renamed over the target once whole."""
    environment = pg_environment(layout)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                checksums: dict[str, str] = {}
                for database in DATABASES:
                    dump = staging / f"{database}.dump"
                    pg_tool(layout, settings, "pg_dump", ["-Fc", "-f", str(dump), database], environment)
                    with dump.open("rb") as reader:
                        add_member(tar, checksums, f"databases/{database}.dump", reader, dump.stat().st_size)
                count = size = 0
                for relative, reader, length in artifact_objects(layout, settings, source, staging):
                    add_member(tar, checksums, f"artifacts/{relative}", reader, length)
                    count, size = count + 1, size + length
                manifest = {
                    "format": FORMAT,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "mlflow_version": importlib.metadata.version("mlflow"),
                    "postgresql_version": postgresql_version(layout, settings, environment),
                    "settings": settings,
                    "databases": list(DATABASES),
                    "artifacts": {"source": source, "objects": count, "bytes": size},
                    "members": checksums,
                }
                text = (json.dumps(manifest, indent=2) + "\n").encode()
                info = member_info(MANIFEST, len(text))
                tar.addfile(info, io.BytesIO(text))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return manifest


def artifact_source(settings: dict) -> str:
    """Where the artifacts are: a folder of this machine, DIR's own bucket, or a store of the operator's (`external`:
    not archived)."""
    if settings.get("object_store"):
        return "bucket"
    return "external" if "://" in settings["artifacts_destination"] else "folder"


def artifact_objects(layout: Layout, settings: dict, source: str, staging: Path) -> Iterator[tuple[str, BinaryIO, int]]:
    """Each artifact as (path relative to the destination, or its key in the bucket; an open reader; its size)."""
    if source == "external":
        return
    if source == "bucket":
        yield from bucket_objects(layout, settings, staging)
        return
    folder = Path(settings["artifacts_destination"])
    if not folder.is_dir():  # no artifact was ever logged
        return
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise SetupError(f"{path} is a link: the server never makes one; check it, then remove it.")
        if path.is_file():
            with path.open("rb") as reader:
                yield path.relative_to(folder).as_posix(), reader, os.fstat(reader.fileno()).st_size


def bucket_objects(layout: Layout, settings: dict, staging: Path) -> Iterator[tuple[str, BinaryIO, int]]:
    """Every object of DIR's bucket, read through its S3 API into a private file of ``staging`` one at a time, so
    that the archive gets exactly the size it is told and an S3 error is one line here, not mid-member."""
    from botocore.exceptions import BotoCoreError, ClientError  # the server extra, like boto3 in s3_client

    if not bucket_found(layout, settings):
        print(f"WARNING: {MISSING_BUCKET}; the archive holds the databases and no artifact.", file=sys.stderr)
        return
    client = s3_client(layout, settings)
    copy = staging / "object"
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not normal(key):
                    raise SetupError(
                        f"the bucket {BUCKET} holds {key!r}, which is not a plain path (MLflow never writes "
                        "one): move or remove that object, then run backup again."
                    )
                body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
                fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as target:
                    shutil.copyfileobj(body, target, CHUNK)
                with copy.open("rb") as reader:
                    yield key, reader, os.fstat(reader.fileno()).st_size
                copy.unlink()
    except (BotoCoreError, ClientError) as error:
        raise SetupError(f"cannot read the bucket {BUCKET} at {s3_endpoint(settings)}: {error}") from error


class HashingReader:
    """A reader that feeds what it reads to a sha256, so the checksum is of exactly what was archived."""

    def __init__(self, source: BinaryIO) -> None:
        self.source, self.digest = source, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data


def member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    info.mtime = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    return info


def add_member(tar: tarfile.TarFile, checksums: dict[str, str], name: str, source: BinaryIO, size: int) -> None:
    reader = HashingReader(source)
    tar.addfile(member_info(name, size), reader)
    checksums[name] = reader.digest.hexdigest()


def postgresql_version(layout: Layout, settings: dict, environment: dict[str, str]) -> str:
    query = ["-At", "-c", "SHOW server_version", TRACKING_DB]
    return pg_tool(layout, settings, "psql", query, environment).stdout.strip()


# ---------------------------------------------------------------- restore


def restore(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    if layout.settings.exists() or layout.pgdata.exists():
        raise SetupError(
            f"{layout.root} already holds a tracking server: restore into a new --dir (its data stays as it is)."
        )
    archive = Path(args.archive)
    manifest = verified_manifest(archive)  # before anything is made
    archived = archived_settings(manifest, archive)
    if manifest["artifacts"]["source"] == "folder":  # a link already in --dir must not lead a file elsewhere
        for name in manifest["members"]:
            if name.startswith("artifacts/"):
                destination(layout.artifacts, name, archive)
    if args.pg_port is not None:
        check_pg_port(args.pg_port, "pick another --pg-port, or leave it out for a free one; nothing was restored")
    created = not layout.root.exists()
    make_folder(layout)
    settings = {**archived, "pg_port": args.pg_port or free_port()}
    source = manifest["artifacts"]["source"]
    if source == "folder":
        settings["artifacts_destination"] = str(layout.artifacts)
    # A SeaweedFS of its own for a bucket (free ports now, new keys when it first starts), none for the others.
    settings["object_store"] = object_store_ports() if source == "bucket" else None
    try:
        init_postgres(layout)
        start_postgres(layout, settings["pg_port"])
        try:
            create_databases(layout, settings["pg_port"])
            with running_object_store(layout, settings, source):
                if source == "bucket":
                    make_bucket(layout, settings)
                unpack(layout, settings, archive, manifest)
        finally:
            stop_postgres(layout)
        save_settings(layout, settings)
    except BaseException:
        if created:  # a failed restore leaves no half-made server behind
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    artifacts = manifest["artifacts"]
    where = f" (in the bucket {BUCKET} of a new object store, new keys)" if source == "bucket" else ""
    print(
        f"restored {archive} (made {manifest['created']}, MLflow {manifest['mlflow_version']}) into {layout.root}: "
        f"databases {', '.join(manifest['databases'])}; {artifacts['objects']} artifacts{where}, "
        f"{artifacts['bytes']} bytes"
    )
    installed = importlib.metadata.version("mlflow")
    if installed != manifest["mlflow_version"]:
        print(f"MLflow here is {installed}: run `deploy/tracking-server upgrade --dir {layout.root}` before `up`.")
    if artifacts["source"] == "external":
        print(f"the artifacts in {settings['artifacts_destination']} were not in the archive: copy them yourself.")
    show_settings(settings)
    logins = "the users log in as before" if settings["auth"] else "logins are off, as the archive's settings say"
    print(f"start it: deploy/tracking-server up --dir {layout.root} [--port PORT] ({logins})")
    return 0


def archived_settings(manifest: dict, archive: Path) -> dict:
    """The server.json settings of the archive, refused unless each is one `up` writes for a server `backup`
    archives (its own PostgreSQL, no external database). The manifest is outside the checksums, and whoever can
    edit it can recompute them: restore checks these and shows them (show_settings), it cannot vouch for them."""
    settings = manifest["settings"]
    missing = sorted(set(REQUIRED_SETTINGS) - set(settings))
    unknown = sorted(set(settings) - set(SETTING_CHECKS))
    if missing or unknown:
        refuse(archive, f"its settings lack {missing} or hold settings `up` never writes {unknown}")
    for key, value in settings.items():
        if not SETTING_CHECKS[key](value):
            refuse(archive, f"its setting {key} = {json.dumps(value)} is not one `up` writes for a server it backs up")
    return settings


def show_settings(settings: dict) -> None:
    """Print the restored settings, with a warning for each that opens the server: `up` starts it with them."""
    logins = "logins OFF"
    if settings["auth"]:
        admin, permission = settings.get("admin_username"), settings["default_permission"]
        logins = f"logins on (admin {admin!r}, default permission {permission})"
    print(
        f"settings from the archive (its checksums do not cover them): MLflow server on {settings['host']}:"
        f"{settings['port']}, {logins}, {settings['workers']} workers; `up --host/--port/--auth` changes them"
    )
    if not settings["auth"]:
        print(
            "WARNING: the archive's settings turn logins off: once `up` runs, whoever reaches the port reads every "
            "run and artifact and writes runs, models and aliases; check the archive's origin, and add --auth to "
            "`up` (with the admin's credentials) to require logins.",
            file=sys.stderr,
        )
    if not loopback(settings["host"]):
        print(
            f"WARNING: the archive's settings bind the MLflow server to {settings['host']}, not to loopback: "
            "`up --host 127.0.0.1` keeps it on this machine.",
            file=sys.stderr,
        )
    if settings["default_permission"] in ("EDIT", "MANAGE"):
        print(
            f"WARNING: the archive's settings give every user {settings['default_permission']} on everything "
            "without a grant: `up --default-permission NO_PERMISSIONS` takes it back.",
            file=sys.stderr,
        )


def verified_manifest(archive: Path) -> dict:
    """The archive's manifest, once every member is found with the sha256 it lists and nothing else is there."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            manifest = read_manifest(tar, archive)
            listed = manifest["members"]
            seen = set()
            for member in tar:
                if member.name == MANIFEST:
                    continue
                if member.name not in listed or not member.isfile():
                    refuse(archive, f"it holds {member.name!r}, which its manifest does not list")
                if member.name in seen:
                    refuse(archive, f"it holds {member.name!r} twice")
                if sha256(tar.extractfile(member)) != listed[member.name]:
                    refuse(archive, f"{member.name} does not match its checksum in the manifest")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        refuse(archive, f"it is not a whole tar.gz ({error})")
    if missing := sorted(set(listed) - seen):
        refuse(archive, f"{len(missing)} members of its manifest are missing, e.g. {missing[0]}")
    return manifest


def read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        handle = tar.extractfile(MANIFEST)
    except KeyError:
        refuse(archive, f"it has no {MANIFEST}: it was not written by `deploy/tracking-server backup`")
    try:
        manifest = json.loads(handle.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        refuse(archive, f"its {MANIFEST} is not JSON")
    shape = {"members": dict, "settings": dict, "artifacts": dict, "databases": list, "created": str}
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or any(not isinstance(manifest.get(key), kind) for key, kind in shape.items())
        or manifest["artifacts"].get("source") not in ARTIFACT_SOURCES
    ):
        refuse(archive, f"its {MANIFEST} is not one of format {FORMAT}")
    dumps = {f"databases/{database}.dump" for database in DATABASES}
    for name in manifest["members"]:
        if not (name in dumps or (name.startswith("artifacts/") and normal(name))):
            refuse(
                archive,
                f"its manifest names {name!r}, which is not {' or '.join(sorted(dumps))} nor a normal path under "
                "artifacts/ (no empty, `.` or `..` part, no leading or trailing `/`)",
            )
    if set(DATABASES) != set(manifest["databases"]) or not dumps <= set(manifest["members"]):
        refuse(archive, f"it does not hold the databases {', '.join(DATABASES)}")
    return manifest


def normal(name: str) -> bool:
    """Whether an archive's name is a relative POSIX path written as it reads: `PurePosixPath` gives it back
    unchanged (so no `//`, no `./`, no trailing `/`), and none of its parts is empty, `.` or `..`."""
    path = PurePosixPath(name)
    return path.as_posix() == name and not path.is_absolute() and not {"", ".", ".."} & set(path.parts)


def destination(base: Path, name: str, archive: Path) -> Path:
    """Where the member ``name`` (top folder/relative path) is written under ``base``, refused unless that path,
    with every link already on its way followed, is still under ``base``."""
    path = base / name.split("/", 1)[1]
    if not path.resolve().is_relative_to(base):
        refuse(archive, f"its member {name} would be written to {path.resolve()}, outside {base} (a link on the way?)")
    return path


def refuse(archive: Path, why: str) -> NoReturn:
    raise SetupError(f"refusing {archive}: {why}; nothing was restored. Use an intact archive of `backup`.")


def sha256(source: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def unpack(layout: Layout, settings: dict, archive: Path, manifest: dict) -> None:
    """Restore both databases and put the artifacts back, checking each member again as it is written."""
    environment = pg_environment(layout)
    to_bucket = manifest["artifacts"]["source"] == "bucket"
    with (
        tempfile.TemporaryDirectory(prefix=".restore-", dir=layout.root) as staging,
        tarfile.open(archive, "r:gz") as tar,
    ):
        upload = bucket_uploader(layout, settings) if to_bucket else None
        for member in tar:
            if member.name == MANIFEST:
                continue
            top, relative = member.name.split("/", 1)
            if top == "databases":
                path = destination(Path(staging), member.name, archive)
            else:  # an object goes to the bucket through a private file, checked before it is uploaded
                path = Path(staging) / "object" if upload else destination(layout.artifacts, member.name, archive)
            write_member(tar.extractfile(member), path, manifest["members"][member.name], archive)
            if top == "artifacts" and upload:
                upload(relative, path)
                path.unlink()
        for database in manifest["databases"]:
            dump = str(Path(staging) / f"{database}.dump")
            restore_options = ["--exit-on-error", "--single-transaction", "--no-owner", "-d", database, dump]
            pg_tool(layout, settings, "pg_restore", restore_options, environment)


def bucket_uploader(layout: Layout, settings: dict) -> Callable[[str, Path], None]:
    """A function that puts a file into DIR's bucket under a key (one PUT each, like the MLflow server's)."""
    from botocore.exceptions import BotoCoreError, ClientError  # the server extra, like boto3 in s3_client

    client = s3_client(layout, settings)

    def upload(key: str, path: Path) -> None:
        try:
            with path.open("rb") as body:
                client.put_object(Bucket=BUCKET, Key=key, Body=body)
        except (BotoCoreError, ClientError) as error:
            raise SetupError(f"cannot put {key} into the bucket {BUCKET}: {error}") from error

    return upload


def write_member(source: BinaryIO, destination: Path, checksum: str, archive: Path) -> None:
    """Write a new file (never through a link, never over one) whose bytes must have ``checksum``."""
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as target:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            target.write(chunk)
    if digest.hexdigest() != checksum:
        refuse(archive, f"{destination.name} changed while it was restored")


# ---------------------------------------------------------------- upgrade


def upgrade(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    settings = load_settings(layout)
    if not settings:
        raise SetupError(f"no tracking server in {layout.root}: give the --dir of `up`.")
    with running_postgres(layout, settings):
        uris = schema_uris(layout, settings)
        before = revisions(uris)
        stale = [label for label, (current, head) in before.items() if current != head]
        if not stale:
            at = "; ".join(f"{label} at {current}" for label, (current, _) in before.items())
            print(f"already current for MLflow {importlib.metadata.version('mlflow')}: {at}; nothing to do")
            return 0
        if (pid := mlflow_pid(layout, settings["port"])) is not None:
            raise SetupError(
                f"the MLflow server (pid {pid}) still runs on the old schema: stop it with `deploy/tracking-server "
                f"down --dir {layout.root} --keep-postgres`, run upgrade again, then `up`."
            )
        for label in stale:
            _, _, command = SCHEMAS[label]
            uri, password = uris[label]
            result = subprocess.run(
                [sys.executable, *command, uri],
                env=password_environment(password),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise SetupError(
                    f"the {label}'s migration failed (restore the backup you took before it):\n"
                    f"{(result.stderr or result.stdout).strip()[-3000:]}"
                )
        after = revisions(uris)
    for label in stale:
        print(f"{label}: upgraded from {before[label][0] or 'an empty schema'} to {after[label][0]}")
    print(f"start the server: deploy/tracking-server up --dir {layout.root}")
    return 0


def schema_uris(layout: Layout, settings: dict) -> dict[str, tuple[str, str | None]]:
    """Each database's URI without its password, and that password (given to libpq as PGPASSWORD)."""
    wanted = {"tracking database": ("backend_store_uri", TRACKING_DB)}
    if settings["auth"]:
        wanted["user database"] = ("auth_database_uri", AUTH_DB)
    uris = {}
    for label, (key, database) in wanted.items():
        uri = external_uri(layout, settings, key)
        if uri is None:
            uris[label] = (database_uri(settings["pg_port"], database), secret(layout.pg_password))
            continue
        uris[label] = without_password(uri)
        if uris[label][1] is not None and not uri.startswith("postgresql"):
            raise SetupError(
                f"the {label} ({mask_password(uri)}) has a password and is not PostgreSQL: migrate it "
                "yourself with `mlflow db upgrade` as its documentation says."
            )
    return uris


def password_environment(password: str | None) -> dict[str, str]:
    """The environment of a child that connects: the password by PGPASSWORD, never on its command line."""
    environment = {key: value for key, value in os.environ.items() if key != "PGPASSWORD"}
    return {**environment, "PGPASSWORD": password} if password is not None else environment


def without_password(uri: str) -> tuple[str, str | None]:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    location = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{location}")), unquote(parts.password)


def revisions(uris: dict[str, tuple[str, str | None]]) -> dict[str, tuple[str | None, str]]:
    """Each database's alembic revision and the installed MLflow's head, read by the server's Python."""
    schemas = {label: [uri, password, *SCHEMAS[label][:2]] for label, (uri, password) in uris.items()}
    result = subprocess.run(
        [sys.executable, "-c", REVISIONS],
        env={**password_environment(None), "TRACKING_SERVER_SCHEMAS": json.dumps(schemas)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SetupError(f"cannot read the schemas' revisions: {result.stderr.strip().splitlines()[-1]}")
    return {label: tuple(pair) for label, pair in json.loads(result.stdout).items()}


# ---------------------------------------------------------------- PostgreSQL in DIR


def managed_settings(layout: Layout) -> dict:
    settings = load_settings(layout)
    if not settings:
        raise SetupError(f"no tracking server in {layout.root}: give the --dir of `up`.")
    if settings.get("backend_store_uri") is not None:
        raise SetupError(
            f"{layout.root} uses an external database ({mask_password(settings['backend_store_uri'])}): "
            "back it up with its own tools (pg_dump), and the artifacts with it."
        )
    return settings


@contextlib.contextmanager
def running_postgres(layout: Layout, settings: dict) -> Iterator[None]:
    """PostgreSQL of DIR running for the block: started (and stopped after) when it was not running."""
    started = settings.get("backend_store_uri") is None and postgres_pid(layout) is None
    if started:
        start_postgres(layout, settings["pg_port"])
    try:
        yield
    finally:
        if started:
            stop_postgres(layout)


@contextlib.contextmanager
def running_object_store(layout: Layout, settings: dict, source: str) -> Iterator[None]:
    """SeaweedFS of DIR running for the block when the artifacts are in its bucket: started (and stopped after)
    when it was not running, as running_postgres does for PostgreSQL, so that a stopped server backs up too."""
    started = None
    if source == "bucket" and weed_pid(layout) is None:
        started = start_seaweedfs(layout, settings, HEALTH_TIMEOUT_S)
    try:
        yield
    finally:
        if started:
            stop_seaweedfs(layout, settings, started)


def pg_environment(layout: Layout) -> dict[str, str]:
    """The superuser's password for PostgreSQL's client tools, by environment (never their command line)."""
    return password_environment(secret(layout.pg_password))


def pg_tool(
    layout: Layout, settings: dict, tool: str, arguments: list[str], environment: dict[str, str]
) -> subprocess.CompletedProcess:
    """A PostgreSQL client (pg_dump, pg_restore, psql) on DIR's cluster, run as the caller: clients may run as root."""
    connection = ["-h", "127.0.0.1", "-p", str(settings["pg_port"]), "-U", PG_USER]
    result = subprocess.run(
        [str(postgres_bin() / tool), *connection, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SetupError(f"{tool} {' '.join(arguments)} failed: {(result.stderr or result.stdout).strip()}")
    return result
