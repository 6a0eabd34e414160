"""Each test file's seconds in the last full run, so that xdist starts the longest files first.

Handed out in collection order (``--no-loadscope-reorder``), whole files go to whichever worker is
free; a long file that starts last keeps one worker busy while the other idles. The figures only
order the files: stale ones cost time, never a result. Refresh them after a full run::

    python -m pytest --durations=0 -q | python -m tests.durations
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

RECORD = Path(__file__).with_name("durations.json")
_LINE = re.compile(r"^(?P<seconds>\d+(?:\.\d+)?)s (?:setup|call|teardown)\s+(?P<file>tests/[^:]+\.py)::")


def file_seconds() -> dict[str, float]:
    """Seconds per test file (paths relative to the repository), as recorded."""
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def record(report: str) -> dict[str, float]:
    """Sum pytest's ``--durations`` lines per file and write them to ``durations.json``."""
    seconds: Counter[str] = Counter()
    for line in report.splitlines():
        if match := _LINE.match(line):
            seconds[match["file"]] += float(match["seconds"])
    if not seconds:
        raise SystemExit("no '--durations' lines on standard input: pipe `python -m pytest --durations=0 -q` into it")
    ordered = {file: round(total, 1) for file, total in seconds.most_common()}
    RECORD.write_text(json.dumps(ordered, indent=1) + "\n")
    return ordered


if __name__ == "__main__":
    print(f"{len(record(sys.stdin.read()))} files recorded in {RECORD}")
