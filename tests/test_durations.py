"""The per-file seconds that order the files for xdist: summed from pytest's --durations lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import durations

REPORT = """\
============================= slowest durations =============================
12.50s call     tests/test_a.py::test_one[x]
3.20s setup    tests/test_b.py::test_two
1.00s call     tests/test_a.py::test_three
0.50s teardown tests/test_b.py::test_two
(12 durations < 0.005s hidden.  Use -vv to show these durations.)
491 passed in 60.10s
"""


def test_the_report_is_summed_per_file_longest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durations, "RECORD", tmp_path / "durations.json")

    recorded = durations.record(REPORT)

    assert recorded == {"tests/test_a.py": 13.5, "tests/test_b.py": 3.7}
    assert list(json.loads((tmp_path / "durations.json").read_text())) == ["tests/test_a.py", "tests/test_b.py"]
    assert durations.file_seconds() == recorded


def test_output_without_durations_is_refused_saying_what_to_pipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(durations, "RECORD", tmp_path / "durations.json")

    with pytest.raises(SystemExit, match="--durations=0"):
        durations.record("491 passed in 60.10s\n")
    assert not (tmp_path / "durations.json").exists()


def test_the_committed_record_names_only_files_that_exist() -> None:
    """A renamed file would silently lose its place at the front."""
    root = Path(__file__).resolve().parents[1]
    assert durations.file_seconds() and all((root / file).is_file() for file in durations.file_seconds())
