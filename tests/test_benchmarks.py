"""The throughput benchmarks run end to end at their smallest size on the tiny model and print their
share of the machine's peak. Their figures are not checked here (timings belong in the benchmarks
themselves); this catches a benchmark that no longer runs against the code it measures. The serving and Spark
benchmarks measure the session's fine-tuned model (``--model-uri``) instead of fine-tuning their own;
the predict benchmark still fine-tunes, so the benchmarks' default model is run too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SMALLEST = {
    "extract": ["--texts", "64"],
    "finetune": ["--quick"],
    "predict": ["--quick"],
    "contention": ["--texts", "64", "--train-texts", "32", "--rounds", "1"],
    # The busy condition's background load is the contention benchmark's, run above.
    "openmp": ["--texts", "32", "--rounds", "1", "--policies", "PASSIVE", "--conditions", "as is"],
    "engines": ["--texts", "64", "--repeats", "1"],
    "serve": ["--quick"],
    "spark": ["--quick"],
}
GIVEN_A_MODEL = {"serve", "spark"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_the_benchmark_runs_and_prints_its_share_of_the_peak(
    name: str, tiny_model_dir: Path, tracking_uri: str, request: pytest.FixtureRequest
) -> None:
    if name == "spark":
        pytest.importorskip("pyspark", reason="the [spark] extra is not installed")
    # As a user runs it: no test store or experiment (the benchmark makes its own throw-away store), torch on
    # its own thread count rather than the xdist worker's share (several benchmarks measure threads)...
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.pop("OMP_NUM_THREADS", None)
    env["PYTHONPATH"] = str(REPO_ROOT)
    arguments = [*SMALLEST[name], "--model", str(tiny_model_dir)]
    if name in GIVEN_A_MODEL:  # ...or the session's store, where the model it is given lives
        _, run_id = request.getfixturevalue("finetuned_champion")
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        arguments += ["--model-uri", f"runs:/{run_id}/finetune"]
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, peak_line, after = done.stdout.partition("matmul peak GFLOP/s")
    assert peak_line and re.search(r"\d+%", after), done.stdout[-3000:]  # the peak, then shares of it


def test_an_unknown_openmp_condition_is_refused_naming_the_ones_there_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import openmp

    monkeypatch.setattr(sys, "argv", ["openmp", "--conditions", "as is,sunny"])

    with pytest.raises(SystemExit) as exit_info:
        openmp.main()

    assert exit_info.value.code == 2
    assert "--conditions: expected 'as is' and/or 'busy', got sunny" in capsys.readouterr().err


def test_the_study_benchmark_splits_wall_time_by_the_runs_times_in_the_store(tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    from benchmarks.study import wall_parts

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"study-parts-{uuid.uuid4().hex[:8]}")
    t0 = 1_000_000_000_000  # ms since the epoch
    parent = client.create_run(experiment, start_time=t0 + 5_000, tags={"stage": "main"}).info.run_id
    for stage, start, end in (("extract", 12_000, 20_000), ("finetune", 21_000, 51_000)):
        child = client.create_run(
            experiment, start_time=t0 + start, tags={"stage": stage, "mlflow.parentRunId": parent}
        ).info.run_id
        client.set_terminated(child, end_time=t0 + end)
    client.set_terminated(parent, end_time=t0 + 53_000)

    parts = wall_parts(tracking_uri, launched=t0 / 1000, ended=t0 / 1000 + 54, experiment_id=experiment)

    assert parts == pytest.approx(
        {
            "mlflow run: start, new store": 5.0,
            "study process until its first stage": 7.0,
            "stage extract": 8.0,
            "stage finetune": 30.0,
            "between the stages": 1.0,
            "after the last stage": 2.0,
            "process exit": 1.0,
        }
    )
    assert sum(parts.values()) == pytest.approx(54.0)


def test_a_lever_of_the_finetune_benchmark_switches_one_setting_and_an_unknown_one_is_refused() -> None:
    from benchmarks.finetune import SetUp, lever

    ours = SetUp("ours_fp32", "fp32", pad_to_longest_of_split=False, group_by_length=True)

    assert lever(ours, "compile") == SetUp("ours_fp32+compile", "fp32", False, True, compile=True)
    assert lever(ours, "foreach").optim == "adamw_torch"
    assert lever(ours, "threads=1").threads == 1
    assert lever(ours, "logging").stage_logging
    with pytest.raises(SystemExit, match="expected some of compile, foreach, threads=N, logging; got 'threads=0'"):
        lever(ours, "threads=0")
