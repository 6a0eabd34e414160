"""Start, stop and inspect a team MLflow tracking server: PostgreSQL, `mlflow server`, optional logins.

    deploy/tracking-server up     --dir DIR [--port 5000] [--auth] [--object-store] [--host 127.0.0.1] ...
    deploy/tracking-server status --dir DIR
    deploy/tracking-server down   --dir DIR
    deploy/tracking-server backup --dir DIR --to FILE | restore --from FILE --dir NEWDIR | upgrade --dir DIR

DIR holds everything of one server, so several run side by side (`layout`): the PostgreSQL cluster
(`postgres/data`, owned by the `postgres` user when run as root), its log (`postgres/postgres.log`),
the artifacts (`artifacts/`), `mlflow.log`, `mlflow.pid`, the settings of the first `up`
(`server.json`) and the generated secrets (`secrets/`, mode 0700). PostgreSQL listens on
127.0.0.1 only, with a generated password; the MLflow server binds to 127.0.0.1 unless `--host`
says otherwise. `--auth` runs MLflow's basic-auth app with its user database in the same
PostgreSQL; its admin is created at the first `up` from MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (or --admin-password-file): there is no default password.

`--object-store` (remembered like every setting) keeps the artifacts in the S3 bucket `mlflow` of a
SeaweedFS in DIR (`object_store`); an external S3 is `--artifacts-destination s3://BUCKET` with
MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in `up`'s environment.

`up` refuses a DIR or DIR/secrets that another user owns or can write, writes its files whole and
never through a link, keeps passwords off command lines, server.json and its output, and creates
a least-privileged `optuna` role and database for sweeps; `status` and `down` act only on processes
that run in DIR and started when `up` recorded them (docs/team-server.md).

The server itself needs `pip install -e '.[server]'`.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path

from . import archive
from .errors import SetupError
from .layout import Layout
from .mlflow_server import HEALTH_TIMEOUT_S, TRUST_WARNING, auth_environment, healthy, mlflow_pid, start_mlflow
from .object_store import (
    BUCKET,
    check_object_store_ports,
    describe_object_store,
    make_bucket,
    s3_environment,
    start_seaweedfs,
    stop_seaweedfs,
    weed_pid,
)
from .postgres import (
    TRACKING_DB,
    check_pg_port,
    create_databases,
    database_uri,
    init_postgres,
    optuna_uri,
    postgres_pid,
    start_postgres,
    stop_postgres,
)
from .private_files import make_folder
from .processes import HIGHEST_PORT, listen_error, stop_group
from .settings import PERMISSIONS, load_settings, loopback, mask_password, resolve_settings, save_settings, url_of

NOT_RUNNING = 3  # the LSB exit status of `status` for a stopped service
BROKEN = 1  # `status` when everything runs but the object store's bucket is not found


def up(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    make_folder(layout)
    settings = resolve_settings(args, layout)
    if (pid := mlflow_pid(layout, settings["port"])) is not None:
        print(f"already running: mlflow server pid {pid} at {url_of(settings)} (data in {layout.root})")
        return 0
    host, port = settings["host"], settings["port"]
    if not loopback(host) and not settings["auth"]:
        print(TRUST_WARNING.format(host=host), file=sys.stderr)
    if (error := listen_error(host, port)) is not None:
        if error.errno == errno.EADDRINUSE:
            raise SetupError(
                f"port {port} on {host} is already in use by another process (another tracking server?): pick "
                f"another --port, or stop that process first (`ss -ltnp 'sport = :{port}'` names it)."
            )
        raise SetupError(
            f"cannot listen on {host}:{port} ({error.strerror or error}): --host must be an address of this "
            "machine (127.0.0.1, the address of one of its interfaces, or 0.0.0.0 for all of them); "
            "nothing was started."
        )
    managed = settings["backend_store_uri"] is None
    if managed and postgres_pid(layout) is None:
        check_pg_port(settings["pg_port"], "give `up --pg-port` a free one (server.json keeps it); nothing was started")
    if settings["object_store"] and weed_pid(layout) is None:
        check_object_store_ports(settings)
    auth = auth_environment(args, layout, settings) if settings["auth"] else {}  # refuses before anything starts
    started_postgres, started_weed = False, None
    try:
        if managed:
            if not (layout.pgdata / "PG_VERSION").exists():
                init_postgres(layout)
            if postgres_pid(layout) is None:
                start_postgres(layout, settings["pg_port"])
                started_postgres = True
            create_databases(layout, settings["pg_port"])
        save_settings(layout, settings)
        if settings["object_store"]:
            had_data = layout.seaweedfs.exists()
            if weed_pid(layout) is None:
                started_weed = start_seaweedfs(layout, settings, args.timeout)
            if make_bucket(layout, settings) and had_data:
                print(
                    f"WARNING: the bucket {BUCKET} was missing from the object store in {layout.seaweedfs} (deleted?): "
                    "made a new, empty one; the artifacts logged before are gone from it (`restore` a backup).",
                    file=sys.stderr,
                )
            auth = {**auth, **s3_environment(layout, settings)}
        pid = start_mlflow(layout, settings, auth, args.timeout)
    except BaseException:
        if started_weed:  # a failed `up` leaves nothing running that it started
            stop_seaweedfs(layout, settings, started_weed)
        if started_postgres:
            stop_postgres(layout)
        raise
    if settings["auth"] and not settings.get("admin_created"):
        settings["admin_created"] = True
        save_settings(layout, settings)
    print(
        f"mlflow server pid {pid} at {url_of(settings)}{' (basic-auth)' if settings['auth'] else ''}; "
        f"PostgreSQL {describe_postgres(layout, settings)}; logs in {layout.root}"
    )
    if settings["object_store"]:
        print(f"artifacts: {describe_object_store(layout, settings)[0]} (keys in {layout.secrets})")
    if settings["backend_store_uri"] is None:
        print(f"sweeps: --optuna_storage {optuna_uri(settings['pg_port'])} (password in {layout.optuna_password})")
    print(f"clients: export MLFLOW_TRACKING_URI={url_of(settings)}")
    return 0


def down(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    settings = load_settings(layout)
    if not settings:
        print(f"nothing to stop: {layout.root} holds no tracking server")
        return 0
    if (pid := mlflow_pid(layout, settings["port"])) is not None:
        stop_group(pid)
        print(f"stopped mlflow server pid {pid}")
    layout.mlflow_pid.unlink(missing_ok=True)
    if settings.get("object_store") and (pid := weed_pid(layout)):
        stop_seaweedfs(layout, settings, pid)
        print(f"stopped SeaweedFS pid {pid}")
    if settings.get("backend_store_uri") is None and not args.keep_postgres and (pid := postgres_pid(layout)):
        stop_postgres(layout)
        print(f"stopped PostgreSQL pid {pid}")
    return 0


def describe_postgres(layout: Layout, settings: dict) -> str:
    if settings.get("backend_store_uri"):
        return f"external ({mask_password(settings['backend_store_uri'])})"
    pid = postgres_pid(layout)
    state = f"running, pid {pid}" if pid else "stopped"
    return f"{state}, 127.0.0.1:{settings['pg_port']}, data {layout.pgdata}"


def status(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    settings = load_settings(layout)
    if not settings:
        print(f"no tracking server in {layout.root}")
        return NOT_RUNNING
    pid = mlflow_pid(layout, settings["port"])
    url = url_of(settings)
    state = f"running, pid {pid}, {'healthy' if healthy(url) else 'not answering /health'}" if pid else "stopped"
    print(f"mlflow server: {state}, {url}, auth {'on' if settings['auth'] else 'off'}, log {layout.mlflow_log}")
    print(f"artifacts:     {settings['artifacts_destination']}")
    problem = None
    if settings.get("object_store"):
        line, problem = describe_object_store(layout, settings)
        print(f"object store:  {line}")
        if problem:
            print(f"               WARNING: {problem}; `backup` archives no artifact while it is so.")
    print(f"postgresql:    {describe_postgres(layout, settings)}")
    managed = settings.get("backend_store_uri") is None
    if managed:
        print(f"backend store: {database_uri(settings['pg_port'], TRACKING_DB)} (password in {layout.pgpass})")
        print(f"optuna store:  {optuna_uri(settings['pg_port'])} (password in {layout.optuna_password})")
    weed_ok = not settings.get("object_store") or weed_pid(layout)
    if not (pid and weed_ok and (not managed or postgres_pid(layout))):
        return NOT_RUNNING
    return BROKEN if problem else 0


def port_number(text: str) -> int:
    """argparse's type for a TCP port: 1 to 65535, told in argparse's one line otherwise."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= HIGHEST_PORT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a number from 1 to {HIGHEST_PORT}")
    return port


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tracking-server", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, function in (("up", up), ("down", down), ("status", status)):
        command = commands.add_parser(name)
        command.set_defaults(function=function)
        command.add_argument("--dir", required=True, help="the folder holding this server's data, logs and pids")
    commands.choices["down"].add_argument(
        "--keep-postgres", action="store_true", help="stop only the MLflow server (for `mlflow db upgrade`)"
    )
    start = commands.choices["up"]
    start.add_argument("--port", type=port_number, help="the MLflow server's port (default 5000)")
    start.add_argument("--host", help="the address to bind (default 127.0.0.1; another without --auth warns)")
    start.add_argument("--auth", action="store_true", help="require logins (MLflow's basic-auth app)")
    start.add_argument("--admin-password-file", help="the admin's password (else MLFLOW_TRACKING_PASSWORD)")
    start.add_argument(
        "--default-permission", choices=PERMISSIONS, help="what a user may do without a grant (default NO_PERMISSIONS)"
    )
    start.add_argument("--pg-port", type=port_number, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    start.add_argument("--backend-store-uri", help="use this existing database instead of a PostgreSQL in DIR")
    start.add_argument("--auth-database-uri", help="the user database for --auth with --backend-store-uri")
    start.add_argument("--artifacts-destination", help="where artifacts are stored (default DIR/artifacts; s3://...)")
    start.add_argument(
        "--object-store",
        action="store_true",
        help="keep artifacts in an S3 bucket of a SeaweedFS in DIR (remembered by later `up`s)",
    )
    start.add_argument("--workers", type=int, help="server worker processes (default 4)")
    start.add_argument("--timeout", type=int, default=HEALTH_TIMEOUT_S, help="seconds to wait for /health")

    save = commands.add_parser("backup", help="archive both databases and the artifacts into one file")
    save.set_defaults(function=archive.backup)
    save.add_argument("--dir", required=True, help="the server's folder (it may be running)")
    save.add_argument("--to", required=True, help="the archive to write (tar.gz, mode 0600; replaced whole)")
    load = commands.add_parser("restore", help="make a new server folder from an archive of `backup`")
    load.set_defaults(function=archive.restore)
    load.add_argument("--from", dest="archive", required=True, help="the archive written by `backup`")
    load.add_argument("--dir", required=True, help="the new server's folder (must not hold a server)")
    load.add_argument("--pg-port", type=port_number, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    migrate = commands.add_parser("upgrade", help="migrate the databases' schemas after `pip install -U mlflow`")
    migrate.set_defaults(function=archive.upgrade)
    migrate.add_argument("--dir", required=True, help="the server's folder (its MLflow server stopped)")
    return top


def main() -> int:
    args = parser().parse_args()
    if shutil.which("runuser") is None and os.geteuid() == 0:
        print("tracking-server: runuser is missing (util-linux)", file=sys.stderr)
        return 1
    try:
        return args.function(args)
    except SetupError as error:
        print(f"tracking-server: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a folder or file of DIR the system refused: say which, without a traceback
        print(f"tracking-server: {error.filename or args.dir}: {error.strerror or error}", file=sys.stderr)
        return 1
