"""A real `mlflow models serve` process on a free loopback port, or its app in process, for the serving tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from emotion_exp.serving import local_server, model_server_command

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


@contextlib.contextmanager
def serving(model_uri: str, tracking_uri: str, workdir: Path) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1 until the block ends; yield the base URL once /ping answers."""

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with local_server(model_server_command(model_uri), "/ping", workdir / "server.log", env=env, cwd=workdir) as url:
        yield url


def scoring_app(model: object) -> TestClient:
    """The app ``mlflow models serve`` runs for ``model`` (MLflow's public ``scoring_server.init``), in process.

    Building the app marks the whole process as a server (an environment variable): it is put back as it was.
    """
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    saved = dict(os.environ)
    try:
        return TestClient(scoring_server.init(model))
    finally:
        os.environ.clear()
        os.environ.update(saved)
