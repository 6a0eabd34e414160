"""The main entry point: the whole study as nested runs of one parent, compared on the parent.

Here through the CLI in process; `mlflow run .` runs it once, in tests/test_console_noise.py (the
README's first command), with the same checks."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from emotion_exp.cli import cli
from tests.helpers import check_study, study_params


@pytest.mark.slow
def test_main_runs_every_stage_as_children_and_compares_them(small_dataset, tiny_model_dir, isolated_mlflow) -> None:
    name = f"study-{uuid.uuid4().hex[:8]}"
    arguments = ["main"]
    for key, value in study_params(small_dataset, tiny_model_dir, name).items():
        arguments += [f"--{key}", value]

    result = CliRunner().invoke(cli, arguments)

    assert result.exit_code == 0, result.output
    parent = check_study(isolated_mlflow, name)
    summary = result.output[result.output.index("Study finished in ") :]
    assert f"run {parent.info.run_id} in experiment {isolated_mlflow!r}" in summary
    assert f"(models:/{name}@champion)" in summary and "export MLFLOW_TRACKING_URI=sqlite:///" in summary
    assert " mlflow ui --backend-store-uri sqlite:///" in summary
