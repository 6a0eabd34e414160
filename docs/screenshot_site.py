"""Build the docs site and screenshot its home page in headless Chromium, to see that the theme and pictures render.

Needs Debian's `chromium` (`apt-get install chromium`) and the docs extra (`pip install -e '.[docs]'`).

    python -m docs.screenshot_site [--output site-home.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from docs.screenshot_ui import CHROMIUM_FLAGS

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tall enough for the home page's first picture (the MLflow UI's comparison) to be in the shot.
WINDOW = "--window-size=1280,3000"
TIMEOUT_S = 120


def build(site_dir: Path) -> None:
    """The site as CI builds it: a warning (a broken link, a missing picture) fails."""
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site_dir)],
        cwd=REPO_ROOT,
        check=True,
        timeout=TIMEOUT_S,
    )


def screenshot(page: Path, output: Path) -> None:
    """Open a built page from disk in headless Chromium and save what it shows as a PNG."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, WINDOW, "--hide-scrollbars", f"--screenshot={output}", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("site-home.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        build(site)
        screenshot(site / "index.html", args.output.resolve())
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
