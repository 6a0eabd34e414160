"""What the console shows outside the CLI's own quieting: a served model's log, a user's mlflow.pyfunc."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from emotion_exp.stages import finetune
from tests.helpers import tiny_finetune_config


@pytest.fixture
def loud_transformers(monkeypatch: pytest.MonkeyPatch):
    """transformers as a fresh process without emotion-exp's CLI has it: bars on, warnings shown."""
    from transformers.utils import logging as transformers_logging

    monkeypatch.delenv("EMOTION_EXP_VERBOSE", raising=False)
    bar, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.enable_progress_bar()
    transformers_logging.set_verbosity_warning()
    yield transformers_logging
    transformers_logging.set_verbosity(verbosity)
    (transformers_logging.enable_progress_bar if bar else transformers_logging.disable_progress_bar)()


@pytest.mark.slow
def test_loading_a_transformer_model_prints_no_weight_loading_bar(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str, tmp_path: Path, loud_transformers, capfd
) -> None:
    run_id = finetune.run(tiny_finetune_config(small_dataset, tiny_model_dir, tmp_path, registered_model=""))
    capfd.readouterr()

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")

    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out
    assert loud_transformers.is_progress_bar_enabled(), "transformers' own setting is restored after loading"
    assert len(model.predict(["i feel so happy today"])) == 1


@pytest.mark.slow
def test_a_stage_on_a_tracking_server_prints_its_closing_line_and_nothing_else(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from emotion_exp.serving import local_server

    def server(port: int) -> list[str]:
        store = f"sqlite:///{tmp_path / 'server.db'}"
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1"] + [
            "--port",
            str(port),
        ]

    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "EMOTION_EXP_"))}
    with local_server(server, "/health", tmp_path / "server.log", env=env, cwd=tmp_path) as url:
        finished = subprocess.run(
            [sys.executable, "-m", "emotion_exp", "dummy"],
            env={**env, "MLFLOW_TRACKING_URI": url},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = finished.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dummy: val accuracy "), lines  # no "🏃 View run" pair
