"""Screenshot the MLflow UI's comparison of the latest study's stage runs (for the README; not CI).

After `mlflow run . --env-manager local`, this starts `mlflow ui` on loopback over the same
store and opens the experiment's runs in chart view, filtered to the stage runs (children with
metrics) of the newest finished `main` run, in headless Chromium driven by chromedriver (W3C
WebDriver over HTTP, no extra Python package). It closes the assistant side panel, expands the
parent run, keeps the validation accuracy and F1 charts (one bar per stage) and saves a PNG.

Needs the Debian packages `chromium` and `chromium-driver` (`apt-get install chromium
chromium-driver`).

    python -m docs.screenshot_ui [--tracking-uri sqlite:///mlflow.db] [--experiment Default]
                                 [--output docs/mlflow-ui-comparison.png]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

from emotion_exp.serving import local_server

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
WAIT_S = 90
WINDOW = "--window-size=1600,800"
# The assistant side panel would take a third of the picture.
CLOSE_PANEL = """
const close = document.querySelector('[data-component-id="mlflow.assistant.chat_panel.close"]');
if (close) { close.click(); }
"""
EXPAND_PARENTS = """
document.querySelectorAll('[data-component-id*="runnamecellrenderer"]').forEach((button) => button.click());
"""
CHART_SEARCH = "input[placeholder='Search metric charts']"
CHART_FILTER = "^val_(accuracy|f1)"
W3C_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
RUN_FIRST = "run `mlflow run . --env-manager local` first"


def study_runs(tracking_uri: str, experiment: str) -> tuple[str, list[str]]:
    """The experiment id and the stage runs (children with metrics) of its newest finished main run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {tracking_uri}; {RUN_FIRST}")
    parents = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string="tags.stage = 'main' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not parents:
        raise SystemExit(f"no finished main run in experiment {experiment!r}; {RUN_FIRST}")
    children = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    return found.experiment_id, [r.info.run_id for r in children if r.data.metrics]


def screenshot(url: str, output: Path, workdir: Path) -> None:
    """Open the runs chart view in headless Chromium through chromedriver, focus it on the scores, save a PNG.

    The stage runs sit under their parent in the table: the parent is expanded so that the charts
    draw each stage, and the chart filter keeps the validation accuracy and F1 charts.
    """
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    with local_server(lambda port: [chromedriver, f"--port={port}"], "/status", workdir / "chromedriver.log") as base:
        options = {"args": [*CHROMIUM_FLAGS, WINDOW]}
        if shutil.which("chromium"):
            options["binary"] = shutil.which("chromium")
        session = requests.post(
            f"{base}/session", json={"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}, timeout=60
        ).json()["value"]["sessionId"]
        try:
            requests.post(f"{base}/session/{session}/url", json={"url": url}, timeout=120).raise_for_status()
            _wait_for_text(base, session, "Model metrics", url)
            _execute(base, session, CLOSE_PANEL)
            _execute(base, session, EXPAND_PARENTS)
            search = requests.post(
                f"{base}/session/{session}/element", json={"using": "css selector", "value": CHART_SEARCH}, timeout=30
            ).json()["value"][W3C_ELEMENT]
            requests.post(f"{base}/session/{session}/element/{search}/value", json={"text": CHART_FILTER}, timeout=30)
            _wait_for_text(base, session, "finetune", url)
            time.sleep(3)  # let the charts finish drawing
            png = requests.get(f"{base}/session/{session}/screenshot", timeout=60).json()["value"]
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(base64.b64decode(png))
        finally:
            requests.delete(f"{base}/session/{session}", timeout=30)


def _wait_for_text(base: str, session: str, text: str, url: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while text not in _page_text(base, session):
        if time.monotonic() > deadline:
            raise SystemExit(f"the page never showed {text!r}: {url}")
        time.sleep(1)


def _execute(base: str, session: str, script: str) -> object:
    answer = requests.post(f"{base}/session/{session}/execute/sync", json={"script": script, "args": []}, timeout=30)
    return answer.json().get("value")


def _page_text(base: str, session: str) -> str:
    return _execute(base, session, "return document.body.innerText;") or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default"))
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("mlflow-ui-comparison.png"))
    args = parser.parse_args()

    experiment_id, runs = study_runs(args.tracking_uri, args.experiment)

    def mlflow_ui(port: int) -> list[str]:
        return ["mlflow", "ui", "--backend-store-uri", args.tracking_uri, "--host", "127.0.0.1", "--port", str(port)]

    with tempfile.TemporaryDirectory() as folder, local_server(mlflow_ui, "/health", Path(folder) / "ui.log") as ui:
        only_stages = "attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in runs) + ")"
        query = urllib.parse.urlencode({"compareRunsMode": "CHART", "searchFilter": only_stages})
        screenshot(f"{ui}/#/experiments/{experiment_id}/runs?{query}", args.output, Path(folder))
    print(f"saved {args.output} ({len(runs)} runs compared)")


if __name__ == "__main__":
    main()
