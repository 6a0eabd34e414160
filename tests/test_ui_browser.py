"""What a newcomer sees first, checked in a real browser: each link the study's summary prints, opened in
headless Chromium at 1400x1000 over the `mlflow ui` the summary's own command starts, shows the winner and
its validation accuracy with its interval without scrolling or clicking.

Runs where Chromium and chromedriver are installed (`apt-get install chromium chromium-driver`; CI installs
them), skipped elsewhere. docs/screenshot_ui.py drives the browser the same way and saves the docs' pictures.

    python -m pytest tests/test_ui_browser.py -m slow
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from docs.screenshot_ui import Browser, summary_links, summarys_ui
from emotion_exp import console
from emotion_exp.cli import cli
from emotion_exp.serving import free_port
from emotion_exp.workflows import study
from tests.helpers import study_params

BROWSER = shutil.which("chromium") and shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(not BROWSER, reason="needs Chromium and chromedriver: apt-get install chromium chromium-driver")
def test_every_link_of_the_summary_shows_the_winner_and_its_interval_on_the_first_screen(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a fresh store: its experiment holds this study only
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "landing")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment exported the session's
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("landing")
    arguments = ["main"]
    for key, value in study_params(small_dataset, tiny_model_dir, f"landing-{uuid.uuid4().hex[:8]}").items():
        arguments += [f"--{key}", value]
    done = CliRunner().invoke(cli, arguments)
    assert done.exit_code == 0, done.output[-3000:]
    [parent] = mlflow.search_runs(
        experiment_names=["landing"], filter_string="tags.stage = 'main'", output_format="list"
    )
    children = mlflow.search_runs(
        experiment_names=["landing"],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    # The winner from its own run's scores, not from the text the study wrote.
    winner = max((run for run in children if "val_accuracy_ci_low" in run.data.metrics), key=_val_accuracy)
    expected = [winner.data.tags["stage"], f"val accuracy {console.shown_score(winner.data.metrics, 'val_accuracy')}"]

    summary = study.summary(parent.info.run_id, seconds=1.0, ui_port=free_port())
    links = summary_links(summary)
    assert list(links) == ["the study's result", "its stage runs, best first", "its models"]
    seen = {}
    with summarys_ui(summary, tmp_path), Browser.open(tmp_path) as browser:
        for label, url in links.items():
            seen[label] = browser.first_screen(url, expected[0])

    for label, text in seen.items():
        assert all(part in text for part in expected), f"{label}: {expected} not on the first screen:\n{text[:3000]}"
    assert "Detect Issues" not in seen["its stage runs, best first"]  # MLflow's training view, not the GenAI one
    for stage in ("finetune", "probe", "tfidf"):  # the logged models, named after their stage
        assert stage in seen["its models"].split(), seen["its models"]


def _val_accuracy(run: mlflow.entities.Run) -> float:
    return run.data.metrics["val_accuracy"]
