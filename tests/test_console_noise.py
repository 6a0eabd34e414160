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
