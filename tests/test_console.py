"""What a run prints: progress that suits the output, closing lines, no library noise. The whole study's
output, summary included, is checked line by line in tests/test_console_noise.py (the first command)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from emotion_exp import catalog, console
from emotion_exp.cli import cli
from tests.conftest import REPO_ROOT

# What the libraries printed before the console was quieted (issue 14), none of which a user can act on.
NOISE = (
    "Inferred schema contains integer column",
    "CloudPickle",
    "LOAD REPORT",
    "MISSING",
    "n_jobs value",
    "indexing errors",
    "{'loss'",
    "{'eval_loss'",
    "{'train_runtime'",
    "already exists. Creating a new version",
    "Created version",
    "Warning",
    "Traceback",
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_or_pipe_gets_a_line_every_ten_percent_and_no_carriage_returns() -> None:
    stream = io.StringIO()
    with console.progress(1000, "extract train", stream=stream) as bar:
        for _ in range(100):
            bar.update(10)

    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("extract train:  10% (100/1,000 texts, ")
    assert lines[-1].startswith("extract train: 100% (1,000/1,000 texts, ")


def test_a_terminal_gets_a_bar() -> None:
    stream = _Terminal()
    with console.progress(100, "predict", stream=stream) as bar:
        bar.update(100)
    assert "\r" in stream.getvalue() and "100/100" in stream.getvalue()


def test_closing_lines_name_the_key_scores_and_the_run() -> None:
    scores = {"val_accuracy": 0.61234, "val_f1_weighted": 0.6, "test_accuracy": 0.59, "train_rows": 3}
    line = catalog.closing_line("probe", "abc", scores, {"registered_model": "m", "registered_version": "2"})
    assert (
        line
        == "probe: val accuracy 0.6123, val F1 0.6000, test accuracy 0.5900; registered as version 2 of 'm' (run abc)"
    )
    with_intervals = {**scores, "val_accuracy_ci_low": 0.5912, "val_accuracy_ci_high": 0.6341}
    line = catalog.closing_line("probe", "abc", with_intervals, {})
    assert line == "probe: val accuracy 0.612 [0.591, 0.634], val F1 0.6000, test accuracy 0.5900 (run abc)"
    seeded = {**scores, "val_accuracy_mean": 0.6, "val_accuracy_std": 0.0123, "seeds_count": 3}
    seeded |= {"val_accuracy_min": 0.59, "val_accuracy_max": 0.61234}
    line = catalog.closing_line("finetune", "abc", seeded, {"best_seed": "43"})
    assert line.startswith(
        "finetune: val accuracy 0.600 ± 0.012 over 3 seeds (0.590-0.612); best seed 43: val accuracy "
    )
    evaluated = catalog.closing_line("evaluate", "xyz", scores, {"registered_model": "m", "registered_version": "2"})
    assert "registered" not in evaluated and evaluated.endswith("; scored version 2 of 'm' (run xyz)")
    reused = catalog.closing_line("extract", "def", {}, {"reused_features": "true", "features_run_id": "old"})
    assert reused == "extract: reused the features of run old (run def)"
    predicted = catalog.closing_line("predict", "ghi", {"rows": 1200, "texts_per_second": 85.2}, {})
    assert predicted == "predict: 1,200 texts at 85 texts/s (run ghi)"


def test_the_ui_command_works_from_any_folder_and_starts_quickly_and_quietly(tmp_path: Path) -> None:
    store, command = console.ui_command("sqlite:///mlflow.db", 5123)

    assert store == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert command == (
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false PYTHONWARNINGS='ignore:starlette.middleware.wsgi is deprecated' "
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'} --port 5123 --workers 1"
    )
    assert console.store_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert console.ui_command("http://127.0.0.1:5000", 5123)[1].startswith("open http://127.0.0.1:5000")


def test_the_ui_port_is_mlflows_default_where_it_is_free_else_another() -> None:
    import socket

    from emotion_exp.serving import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert free_port(port) != port
    assert free_port(port) == port  # free again once closed


def test_a_model_stage_that_registers_nothing_says_how_it_would() -> None:
    scores = {"val_accuracy": 0.6, "val_f1_weighted": 0.6, "test_accuracy": 0.59}
    tags = {console.NOT_REGISTERED_TAG: "--registered_model auto registers it as 'reviews-classifier'"}
    line = catalog.closing_line("tfidf", "abc", scores, tags)
    assert line.endswith("; not registered: --registered_model auto registers it as 'reviews-classifier' (run abc)")


def test_promotes_line_names_the_registered_model() -> None:
    tags = {"promote_decision": "promoted", "promote_reason": "no @champion yet", "registered_model": "reviews-clf"}
    assert (
        catalog.closing_line("promote", "p1", {}, tags)
        == "promote: promoted for 'reviews-clf': no @champion yet (run p1)"
    )


def test_a_stage_run_alone_ends_with_its_scores_and_run_id(small_dataset: Path) -> None:
    import mlflow

    result = CliRunner().invoke(cli, ["dummy", "--dataset", str(small_dataset)])

    assert result.exit_code == 0, result.output
    [run] = mlflow.search_runs(output_format="list")
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("dummy: val accuracy 0.")
    assert last.endswith(f"(run {run.info.run_id})")


def run_cli(*arguments: str, cwd: Path, tracking_uri: str, timeout: int = 600) -> str:
    """The package's CLI in a subprocess with output to a pipe (as under `mlflow run` or in CI); its output."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("EMOTION_EXP_VERBOSE", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)  # its own store, its Default experiment
    for name in console.QUIET_ENVIRONMENT:  # set by the in-process CLI tests; a user's shell starts without them
        env.pop(name, None)
    result = subprocess.run(  # noqa: PLW1510 - the return code is asserted with the output
        [sys.executable, "-m", "emotion_exp", *arguments],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return result.stdout


@pytest.mark.slow
def test_every_fine_tune_in_one_process_stays_quiet(small_dataset: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # Each learning-curve point fine-tunes anew in one process: the Trainer must not reset the verbosity.
    options = ("--stages", "finetune", "--fractions", "0.5,1.0", "--epochs", "2", "--max_length", "32")
    output = run_cli(
        "learning-curve",
        "--dataset",
        str(small_dataset),
        "--model",
        str(tiny_model_dir),
        *options,
        cwd=tmp_path,
        tracking_uri=f"sqlite:///{tmp_path / 'store.db'}",
    )

    for noise in (*NOISE, "mtime may not be reliable"):
        assert noise not in output, f"{noise!r} printed:\n{output}"
    assert output.count("a new, randomly initialised classification head") == 2


@pytest.mark.slow
def test_verbose_shows_what_the_libraries_say(small_dataset: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    arguments = ("tfidf", "--dataset", str(small_dataset))

    quiet = run_cli(*arguments, cwd=tmp_path, tracking_uri=store)
    verbose = run_cli("--verbose", *arguments, cwd=tmp_path, tracking_uri=store)

    # One line saying that 40 validation texts cannot separate stages, then its closing line.
    [caution, closing] = quiet.strip().splitlines()
    assert closing.startswith("tfidf: val accuracy ") and "not registered: --registered_model auto" in closing
    assert caution.startswith("tfidf: 40 validation texts are too few to tell stages apart: ")
    assert "CloudPickle" in verbose and "INFO mlflow" in verbose
