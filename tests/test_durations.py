"""How xdist's work is cut and ordered: the team server's files as one unit, and the per-file seconds
that put the longest units first, summed from pytest's --durations lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest, durations
from tests.conftest import REPO_ROOT

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
    assert durations.file_seconds() and all((REPO_ROOT / file).is_file() for file in durations.file_seconds())


@pytest.mark.slow
def test_the_ordering_keeps_the_marks_that_select_what_needs_postgresql_or_java() -> None:
    """The marks are set as tests are collected, before `-m` deselects (it ran after the ordering hook once)."""
    files = ["tests/test_spark.py", "tests/test_tracking_server_s3.py", "tests/test_durations.py"]
    collected = {}
    for expression in ("not postgres and not java", "postgres", "java"):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"]
            + ["-m", expression, *files],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        collected[expression] = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}

    assert "tests/test_durations.py" in collected["not postgres and not java"]
    assert not {"tests/test_spark.py"} & collected["not postgres and not java"]
    assert collected["postgres"] == {"tests/test_tracking_server_s3.py"}
    assert collected["java"] == {"tests/test_spark.py"}


def fake_item(file: str, name: str, *, server: bool = False, slow: bool = True) -> SimpleNamespace:
    """A collected test as the ordering hook sees it: its file and the marks pytest_itemcollected set."""
    marks = {"slow": pytest.mark.slow} if slow else {}
    if server:
        marks["postgres"] = pytest.mark.postgres
    return SimpleNamespace(nodeid=f"{file}::{name}", get_closest_marker=marks.get)


def test_the_team_servers_files_are_one_unit_ordered_by_their_summed_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    seconds = {"tests/test_grants.py": 50.0, "tests/test_tracking_server.py": 20.0, "tests/test_spark.py": 60.0}
    monkeypatch.setattr(conftest, "file_seconds", lambda: seconds)
    items = [
        fake_item("tests/test_spark.py", "a"),
        fake_item("tests/test_tracking_server.py", "b", server=True),
        fake_item("tests/test_data.py", "c", slow=False),
        fake_item("tests/test_grants.py", "d", server=True),
    ]

    conftest.pytest_collection_modifyitems(items)

    # The server's unit (70 s) before Spark's file (60 s); inside it, the longer file first.
    assert [item.nodeid for item in items] == [
        "tests/test_grants.py::d",
        "tests/test_tracking_server.py::b",
        "tests/test_spark.py::a",
        "tests/test_data.py::c",
    ]
    scheduler = object.__new__(conftest.TeamServerFilesTogether)  # its scopes need no workers
    server_tests = ("tests/test_grants.py::d", "tests/test_tracking_server.py::b")
    assert [scheduler._split_scope(nodeid) for nodeid in server_tests] == [conftest.TEAM_SERVER] * 2
    assert scheduler._split_scope("tests/test_spark.py::a[x]") == "tests/test_spark.py"


def test_a_file_that_uses_the_team_server_outside_the_unit_is_refused_by_name() -> None:
    items = [fake_item("tests/test_newcomer.py", "a", server=True)]

    with pytest.raises(pytest.UsageError, match=r"tests/test_newcomer\.py use\(s\) the team tracking server"):
        conftest.pytest_collection_modifyitems(items)
