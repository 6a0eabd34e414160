"""The page a newcomer lands on, checked in a real browser: headless Chromium over a real `mlflow ui`.

Runs where Chromium is installed (`apt-get install chromium`; CI installs it), skipped elsewhere.
Chromium renders each page with a virtual time budget (the UI fetches the runs after it loads)
and dumps the DOM; the check reads the page's text.

    python -m pytest tests/test_ui_browser.py -m slow
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from emotion_exp import tracking
from emotion_exp.cli import cli
from emotion_exp.serving import local_server
from tests.helpers import WITHOUT_JOB_RUNNER

VIRTUAL_TIME_BUDGET_MS = 20_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered_text(url: str, profile: Path) -> str:
    """The text of ``url`` once rendered by headless Chromium (a fresh profile: no remembered view)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    command += ["--disable-background-networking", f"--user-data-dir={profile}"]
    command += [f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", "--dump-dom", url]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium")
def test_the_study_links_open_the_training_runs_and_their_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Two stages in this process, into a fresh store's "landing" experiment (the links are what is checked).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "landing")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment exported the session's
    mlflow.set_tracking_uri(store)
    experiment_id = mlflow.set_experiment("landing").experiment_id
    for stage in ("dummy", "tfidf"):
        done = CliRunner().invoke(cli, [stage])
        assert done.exit_code == 0, f"{stage} failed:\n{done.output[-3000:]}"
    run_ids = [run.info.run_id for run in mlflow.search_runs([experiment_id], output_format="list")]
    env = {name: value for name, value in os.environ.items() if name not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(WITHOUT_JOB_RUNNER)

    def ui(port: int) -> list[str]:
        return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "-h", "127.0.0.1", "-p", str(port)]

    with local_server(ui, "/health", tmp_path / "ui.log", env=env, cwd=tmp_path) as address:
        # The tracking URI given is the UI's own address, so the links point at this server.
        landing = rendered_text(tracking.experiment_url(experiment_id, address), tmp_path / "a")
        compared = rendered_text(tracking.comparison_url(experiment_id, run_ids, address), tmp_path / "b")

    assert "Runs - Experiment" in landing, landing[:2000]
    assert "Detect Issues" not in landing and "Tokens per Trace" not in landing  # not the GenAI overview
    assert "dummy" in landing and "tfidf" in landing and "2 matching runs" in landing
    assert f"Comparing {len(run_ids)} Runs from 1 Experiment" in compared, compared[:2000]
    # The metrics table is a 300-pixel virtualised grid, alphabetical: only its first 17 rows are in the DOM
    # (test_accuracy .. val_accuracy_ci_low, since every score logs its interval), whatever the window's size.
    assert "test_accuracy" in compared and "test_f1_weighted" in compared and "val_accuracy" in compared
