"""The MLflow UI pages a study's summary links to, as a newcomer first sees them (the docs' UI pictures).

After `mlflow run . --env-manager local`, this prints the summary of the newest finished `main`
run of the experiment, starts `mlflow ui` with the command that summary prints, opens each link it
prints in headless Chromium at 1400x1000 (a fresh profile, so MLflow's assistant panel is open as
a newcomer has it) and saves what the window shows, without scrolling or clicking, as a PNG in
`--folder`. tests/test_ui_browser.py opens the same links the same way and checks that the winner
and its validation accuracy with its interval are in the first screen.

Chromium is driven by chromedriver (W3C WebDriver over HTTP, no extra Python package): Debian's
`chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`).

    python -m docs.screenshot_ui [--tracking-uri sqlite:///mlflow.db] [--experiment Default] [--folder docs]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from emotion_exp.serving import local_server

WIDTH, HEIGHT = 1400, 1000
"""The window a newcomer looks through: what it shows without scrolling is the first screen."""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
WAIT_S = 120
PICTURES = {
    "the study's result": "mlflow-ui-study.png",
    "its stage runs, best first": "mlflow-ui-runs.png",
    "its models": "mlflow-ui-models.png",
}
"""Each link the summary prints, and the picture of it in docs/."""
# The text of the page that the window shows: each text node's boxes, cut by every ancestor that clips its
# overflow (a collapsed description keeps its other lines in the page, hidden), kept where inside the window.
VISIBLE_TEXT = """
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const parts = [];
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  if (!node.textContent.trim()) continue;
  const range = document.createRange();
  range.selectNodeContents(node);
  for (const box of range.getClientRects()) {
    let [left, top, right, bottom] = [box.left, box.top, box.right, box.bottom];
    for (let el = node.parentElement; el; el = el.parentElement) {
      const style = getComputedStyle(el);
      if (style.visibility === 'hidden' || style.display === 'none' || style.opacity === '0') { left = right; }
      if (style.overflowX !== 'visible' || style.overflowY !== 'visible') {
        const clip = el.getBoundingClientRect();
        [left, top, right, bottom] = [Math.max(left, clip.left), Math.max(top, clip.top),
                                      Math.min(right, clip.right), Math.min(bottom, clip.bottom)];
      }
    }
    if (right - left > 1 && bottom - top > 1 && left < innerWidth && top < innerHeight && right > 0 && bottom > 0) {
      parts.push(node.textContent.trim());
      break;
    }
  }
}
return parts.join(' ');
"""
RUN_FIRST = "run `mlflow run . --env-manager local` first"


def summary_links(summary: str) -> dict[str, str]:
    """The links a study's summary prints (``  <label>: <url>`` under ``In the MLflow UI:``), by label."""
    links = summary.split("In the MLflow UI:", 1)[1]
    return dict(re.findall(r"^  (.+?): (http\S+)$", links, flags=re.MULTILINE))


def ui_command(summary: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the command line of the summary's ``Open it:`` line."""
    [line] = [line for line in summary.splitlines() if line.startswith("Open it: ")]
    words = shlex.split(line.removeprefix("Open it: "))
    settings = [word for word in words if re.fullmatch(r"[A-Z_]+=.*", word)]
    return dict(word.split("=", 1) for word in settings), words[len(settings) :]


@contextlib.contextmanager
def summarys_ui(summary: str, workdir: Path) -> Iterator[str]:
    """``mlflow ui`` started by the summary's own command, on the port it names; yields its address."""
    settings, command = ui_command(summary)
    port = int(command[command.index("--port") + 1])
    env = {name: value for name, value in os.environ.items() if name not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    with local_server(lambda _: command, "/health", workdir / "ui.log", env={**env, **settings}, port=port) as address:
        yield address


class Browser:
    """One headless Chromium window of WIDTH x HEIGHT with a fresh profile, driven through chromedriver."""

    def __init__(self, base: str, session: str) -> None:
        self.base, self.session = base, session

    @classmethod
    @contextlib.contextmanager
    def open(cls, workdir: Path) -> Iterator[Browser]:
        chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        with local_server(
            lambda port: [chromedriver, f"--port={port}"], "/status", workdir / "chromedriver.log"
        ) as base:
            options = {"args": [*CHROMIUM_FLAGS, f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars"]}
            if shutil.which("chromium"):
                options["binary"] = shutil.which("chromium")
            capabilities = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
            answer = requests.post(f"{base}/session", json=capabilities, timeout=120).json()
            browser = cls(base, answer["value"]["sessionId"])
            try:
                browser._fit_viewport()
                yield browser
            finally:
                requests.delete(f"{base}/session/{browser.session}", timeout=30)

    def _fit_viewport(self) -> None:
        """Size the window so that the page gets WIDTH x HEIGHT pixels (the window's own frame comes off it)."""
        inner = self._execute("return [window.innerWidth, window.innerHeight];")
        rect = requests.get(f"{self.base}/session/{self.session}/window/rect", timeout=30).json()["value"]
        size = {"width": rect["width"] + WIDTH - inner[0], "height": rect["height"] + HEIGHT - inner[1]}
        requests.post(f"{self.base}/session/{self.session}/window/rect", json=size, timeout=30).raise_for_status()

    def first_screen(self, url: str, wait_for: str) -> str:
        """Open ``url``, wait (bounded) until the page shows ``wait_for`` anywhere, return the window's text."""
        answer = requests.post(f"{self.base}/session/{self.session}/url", json={"url": url}, timeout=180)
        answer.raise_for_status()
        deadline = time.monotonic() + WAIT_S
        while wait_for not in self._execute("return document.body.innerText;"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {wait_for!r} within {WAIT_S} s: {url}")
            time.sleep(1)
        time.sleep(2)  # the page's last requests (a chart, the runs' metrics) settle
        return " ".join(self._execute(VISIBLE_TEXT).split())

    def screenshot(self, output: Path) -> None:
        png = requests.get(f"{self.base}/session/{self.session}/screenshot", timeout=60).json()["value"]
        output.write_bytes(base64.b64decode(png))

    def _execute(self, script: str) -> Any:
        answer = requests.post(
            f"{self.base}/session/{self.session}/execute/sync", json={"script": script, "args": []}, timeout=60
        )
        return answer.json().get("value") or ""


def newest_study(tracking_uri: str, experiment: str) -> str:
    """The id of the newest finished ``main`` run of the experiment."""
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
    return parents[0].info.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default"))
    parser.add_argument("--folder", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()

    import mlflow

    from emotion_exp.serving import free_port
    from emotion_exp.workflows import study

    parent = newest_study(args.tracking_uri, args.experiment)
    summary = study.summary(parent, seconds=0, ui_port=free_port())
    winner = mlflow.get_run(parent).info.run_name.removeprefix("main: ").split(" best: ")[0]
    with (
        tempfile.TemporaryDirectory() as folder,
        summarys_ui(summary, Path(folder)),
        Browser.open(Path(folder)) as browser,
    ):
        for label, url in summary_links(summary).items():
            browser.first_screen(url, winner)
            browser.screenshot(args.folder / PICTURES[label])
            print(f"saved {args.folder / PICTURES[label]} ({label}: {url})")


if __name__ == "__main__":
    main()
