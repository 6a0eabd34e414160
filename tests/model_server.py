"""A real `mlflow models serve` process on a free loopback port, for the serving tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from emotion_exp.serving import local_server, model_server_command


@contextlib.contextmanager
def serving(model_uri: str, tracking_uri: str, workdir: Path) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1 until the block ends; yield the base URL once /ping answers."""

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with local_server(model_server_command(model_uri), "/ping", workdir / "server.log", env=env, cwd=workdir) as url:
        yield url
