"""Which processes are DIR's, and the ports they listen on: psutil for the processes, sockets for the ports.

A pid file of DIR holds a pid and the start time of that process: a pid counts as DIR's only while the
process with it runs in DIR's folder, with the expected command line, and started at that time, so a
reused pid, a decoy or the pid file of a copied DIR is never taken for DIR's server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .errors import SetupError
from .private_files import read_private, write_private

STOP_TIMEOUT_S = 30
# psutil's start time is the kernel's boot time plus the process's clock ticks since boot, and the boot time the
# kernel reports moves by a second now and then (clock adjustments): within this, it is the same start.
START_TOLERANCE_S = 1.5
HIGHEST_PORT = 65535


def record_pid(path: Path, pid: int) -> None:
    """Write ``path``: the pid and the start time of that process."""
    write_private(path, f"{pid} {psutil.Process(pid).create_time()!r}\n")


def recorded_pid(path: Path, working_folder: Path, *arguments: str) -> int | None:
    """The pid in ``path``, when that process still runs in ``working_folder`` with ``arguments`` among its
    command line's and started when it was recorded; None otherwise (gone, another's, a decoy)."""
    if not path.exists():
        return None
    recorded = read_private(path).split()
    if not recorded or len(recorded) > 2 or not recorded[0].isdigit():
        print(f"tracking-server: ignoring {path}: it is empty or damaged", file=sys.stderr)
        return None
    try:
        process = psutil.Process(int(recorded[0]))
        with process.oneshot():
            command, folder, started = process.cmdline(), Path(process.cwd()), process.create_time()
    except psutil.Error:  # gone, or another user's process
        return None
    ours = all(argument in command for argument in arguments) and folder == working_folder
    # A pid file of an early version holds no start time: the working folder is then the check.
    return process.pid if ours and (len(recorded) == 1 or same_start(recorded[1], started)) else None


def same_start(recorded: str, started: float) -> bool:
    try:
        seconds = float(recorded)
    except ValueError:
        return False
    if recorded.isdigit():  # the previous version recorded clock ticks since boot (/proc/PID/stat's 22nd field)
        seconds = seconds / os.sysconf("SC_CLK_TCK") + psutil.boot_time()
    return abs(seconds - started) < START_TOLERANCE_S


def working_in(pid: int, folder: Path) -> bool:
    """Whether the process ``pid`` runs with ``folder`` as its working folder."""
    try:
        return Path(psutil.Process(pid).cwd()) == folder
    except psutil.Error:  # gone, or another user's process
        return False


def listens(pid: int, port: int) -> bool:
    """Whether the process ``pid`` or one of its children holds a socket listening on ``port`` (any address)."""
    try:
        leader = psutil.Process(pid)
        family = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return False
    for process in family:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:  # a worker that ended meanwhile
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            return True
    return False


def start_in_session(
    command: list[str], log: Path, folder: Path, environment: dict[str, str], *, umask: int = -1
) -> subprocess.Popen:
    """Start a server in a session of its own (stop_group then stops all of it), in ``folder``, its output
    appended to ``log`` (mode 0600); ``umask`` for the files and sockets it makes (-1: the caller's)."""
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as output:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=environment,
            start_new_session=True,
            umask=umask,
        )


def stop_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM a server's process group (it was started in a session of its own), SIGKILL what outlives the
    timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listen_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port (another process holds it, or the address is not this
    machine's), found before anything starts; None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error
    return None


def unprivileged_port_start() -> int:
    """The lowest port a process without privileges may listen on (Linux's ip_unprivileged_port_start)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    return 1024


def check_loopback_port(port: object, what: str, fix: str, *, unprivileged: bool = False) -> None:
    """Refuse a port out of range, below the privileged limit for a service that runs without privileges, or
    held by another process on 127.0.0.1, naming it, before anything starts."""
    lowest = unprivileged_port_start() if unprivileged else 1
    if not isinstance(port, int) or isinstance(port, bool) or not lowest <= port <= HIGHEST_PORT:
        why = " (it runs without privileges)" if unprivileged else ""
        raise SetupError(f"{what} {port!r} cannot be used{why}: it takes one from {lowest} to {HIGHEST_PORT}: {fix}.")
    if (error := listen_error("127.0.0.1", port)) is not None:
        raise SetupError(
            f"{what} {port} on 127.0.0.1 cannot be used ({error.strerror or error}: another process holds it, "
            f"`ss -ltnp 'sport = :{port}'` names it): {fix}."
        )
