"""The PostgreSQL cluster of DIR: loopback only, a generated superuser password, the tracking, user and
sweep databases."""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from .errors import SetupError
from .layout import Layout
from .private_files import secret, tail, write_private
from .processes import STOP_TIMEOUT_S, check_loopback_port, working_in

PG_USER = "mlflow"  # the cluster's superuser, owner of both databases
TRACKING_DB, AUTH_DB = "mlflow", "mlflow_auth"
OPTUNA_DB = OPTUNA_USER = "optuna"  # the sweeps' study database, owned by a role that can reach nothing else


@functools.cache
def postgres_bin() -> Path:
    """$PG_BIN, else the newest Debian PostgreSQL (/usr/lib/postgresql/<version>/bin), else initdb's on PATH."""
    if "PG_BIN" in os.environ:
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else Path("/usr/lib/postgresql/15/bin")


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def run_pg(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(as_postgres_user(command), check=False, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SetupError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def init_postgres(layout: Layout) -> None:
    """initdb a loopback-only cluster whose superuser logs in with a generated password."""
    if not (postgres_bin() / "initdb").exists():
        raise SetupError(
            f"no PostgreSQL in {postgres_bin()} (set PG_BIN); install it with "
            "`apt-get install -y --no-upgrade postgresql`."
        )
    layout.postgres.mkdir(mode=0o700, exist_ok=True)
    pwfile = layout.postgres / "initdb-password"
    write_private(pwfile, secret(layout.pg_password) + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(layout.postgres, owner.pw_uid, owner.pw_gid)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        os.chmod(layout.postgres, 0o700)
        check = subprocess.run(as_postgres_user(["test", "-w", str(layout.postgres)]), check=False)
        if check.returncode != 0:
            closed = [str(folder) for folder in layout.root.parents if not folder.stat().st_mode & stat.S_IXOTH]
            raise SetupError(
                f"the postgres user cannot reach {layout.postgres}: {', '.join(closed) or 'a parent folder'} "
                "is not searchable by other users: `chmod o+x` it, or pick a --dir whose parents are."
            )
    try:
        run_pg(
            [
                str(postgres_bin() / "initdb"),
                "-D",
                str(layout.pgdata),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ]
        )
    finally:
        pwfile.unlink(missing_ok=True)


def postgres_pid(layout: Layout) -> int | None:
    """The postmaster's pid when it runs (from its own postmaster.pid)."""
    pidfile = layout.pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    first = pidfile.read_text(errors="replace").split("\n", 1)[0].strip()
    if not first.isdigit():
        return None
    # A copied DIR holds the original's postmaster.pid: the postmaster runs in its own data folder.
    return int(first) if working_in(int(first), layout.pgdata) else None


def start_postgres(layout: Layout, port: int) -> None:
    """pg_ctl start on 127.0.0.1:port; a failure is told with the end of PostgreSQL's log, not pg_ctl's "Examine
    the log output" (a failed restore removes the folder that holds the log)."""
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    command = [str(postgres_bin() / "pg_ctl"), "-D", str(layout.pgdata), "-l", str(layout.postgres_log)]
    try:
        run_pg([*command, "-o", options, "-w", "-t", "60", "start"])
    except SetupError as error:
        raise SetupError(
            f"PostgreSQL did not start on 127.0.0.1:{port}; the end of its log:\n{tail(layout.postgres_log)}"
        ) from error


def check_pg_port(port: object, fix: str) -> None:
    """PostgreSQL runs without privileges (as the `postgres` user when run as root): its port must be one such a
    process may listen on, and free."""
    check_loopback_port(port, "PostgreSQL's port", fix, unprivileged=True)


def stop_postgres(layout: Layout) -> None:
    command = [str(postgres_bin() / "pg_ctl"), "-D", str(layout.pgdata), "-m", "fast", "-w"]
    run_pg([*command, "-t", str(STOP_TIMEOUT_S), "stop"])


def create_databases(layout: Layout, port: int) -> None:
    """Create the tracking and user databases where missing (the server makes their tables)."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError as error:
        raise SetupError("psycopg is missing: install the server extra (`pip install -e '.[server]'`).") from error
    password = secret(layout.pg_password)
    with psycopg.connect(
        host="127.0.0.1", port=port, user=PG_USER, password=password, dbname="postgres", autocommit=True
    ) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in (TRACKING_DB, AUTH_DB):
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')
        # Sweep workers get a login of their own: a leaked Optuna URI must not open the runs or the user store.
        optuna_password = secret(layout.optuna_password)
        roles = {row[0] for row in connection.execute("SELECT rolname FROM pg_roles")}
        verb = "ALTER" if OPTUNA_USER in roles else "CREATE"
        connection.execute(
            sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(OPTUNA_USER), sql.Literal(optuna_password)
            )
        )
        if OPTUNA_DB not in existing:
            connection.execute(f'CREATE DATABASE "{OPTUNA_DB}" OWNER "{OPTUNA_USER}"')
        for name in (TRACKING_DB, AUTH_DB, OPTUNA_DB, "postgres", "template1"):
            connection.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
        connection.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{OPTUNA_DB}" TO "{OPTUNA_USER}"')


def database_uri(port: int, database: str) -> str:
    """A SQLAlchemy URI with psycopg 3 named; the password comes from DIR/secrets/pgpass."""
    return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/{database}"


def optuna_uri(port: int) -> str:
    """The study database's URI without its password (libpq takes it from PGPASSFILE or ~/.pgpass)."""
    return f"postgresql+psycopg://{OPTUNA_USER}@127.0.0.1:{port}/{OPTUNA_DB}"
