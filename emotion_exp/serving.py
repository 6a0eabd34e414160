"""Start a local server on a free loopback port, wait (bounded) until it answers, stop it afterwards.

Shared by the serving tests, the serve benchmark and the UI screenshot script: each starts a
real process (``mlflow models serve``, ``mlflow ui``, chromedriver) the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

START_TIMEOUT_S = 180
READY_POLL_TIMEOUT_S = 2.0  # one readiness request; a slow answer while starting is retried, not an error


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer in time; the message holds the end of its log."""


def free_port(preferred: int = 0) -> int:
    """A port nothing listens on, on 127.0.0.1: ``preferred`` where it is free, else one the system picks."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:  # taken (another `mlflow ui`, a model server): any free one
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def model_server_command(model_uri: str) -> Callable[[int], list[str]]:
    """``mlflow models serve`` of ``model_uri`` in this environment on 127.0.0.1, for ``local_server``."""

    def command(port: int) -> list[str]:
        serve = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
        return [*serve, "-h", "127.0.0.1", "-p", str(port)]

    return command


@contextlib.contextmanager
def local_server(
    command: Callable[[int], list[str]],
    ready_path: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
    bin_dir: Path | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Run ``command(port)`` until the block ends; yield ``http://127.0.0.1:<port>`` once ``ready_path`` answers.

    ``port``: the one a printed command names (by default a free one).

    The environment's bin folder (``bin_dir``, default this interpreter's: another virtual
    environment's serves from there) goes first on PATH (``mlflow models serve`` starts uvicorn
    from PATH); output goes to ``log_path``; the whole process group is stopped afterwards.
    """
    import requests

    env = {**(os.environ if env is None else env)}
    env["PATH"] = f"{bin_dir or Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command(port), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise ServerNotReady(f"{command(port)[0]} exited with {process.returncode}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise ServerNotReady(f"no answer on {url}{ready_path} after {timeout_s:g} s:\n{_tail(log_path)}")
                try:
                    if requests.get(f"{url}{ready_path}", timeout=READY_POLL_TIMEOUT_S).ok:
                        break
                except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy starting
                    pass
                time.sleep(0.25)
            yield url
        finally:
            _stop(process)


def _tail(log_path: Path) -> str:
    return log_path.read_text()[-3000:]


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group has exited already (a server that failed to start)
        process.wait()
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
