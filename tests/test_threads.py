"""--threads: auto keeps torch's own count capped by the usable cores, a number fixes it, extraction
runs on its encoder's count, and OpenMP's idle threads sleep unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emotion_exp import features, models, threads
from emotion_exp.config import EncoderConfig, PredictConfig
from emotion_exp.errors import UserError
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_parse_accepts_auto_or_a_positive_whole_number() -> None:
    assert threads.parse("auto") is None and threads.parse("3") == 3 and threads.parse(2) == 2
    for bad in ("0", "-1", "two", "1.5", ""):
        with pytest.raises(UserError, match="--threads must be 'auto' or a whole number of at least 1"):
            threads.parse(bad)
    with pytest.raises(UserError, match="--threads must be"):
        EncoderConfig(threads="many")
    with pytest.raises(UserError, match="--threads must be"):
        PredictConfig(input="x.csv", threads="0")


def test_the_cgroup_quota_is_read_in_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


def test_openmp_is_left_alone_once_torch_is_loaded_or_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.WAIT_POLICY, raising=False)
    assert not threads.prefer_passive_openmp()  # torch is imported here: too late to matter
    assert threads.WAIT_POLICY not in os.environ

    monkeypatch.setenv(threads.WAIT_POLICY, "ACTIVE")
    monkeypatch.delitem(sys.modules, "torch")
    assert not threads.prefer_passive_openmp()
    assert os.environ[threads.WAIT_POLICY] == "ACTIVE"


@pytest.mark.slow
@pytest.mark.parametrize(("chosen", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_stage_processes_let_idle_openmp_threads_sleep_unless_the_user_chose(
    small_dataset: Path, tmp_path: Path, chosen: str | None, expected: str
) -> None:
    import mlflow

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(threads.WAIT_POLICY, None)
    if chosen:
        env[threads.WAIT_POLICY] = chosen
    done = subprocess.run(
        [sys.executable, "-m", "emotion_exp", "dummy", "--dataset", str(small_dataset)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    [run] = mlflow.search_runs(output_format="list")
    assert run.data.tags["omp_wait_policy"] == expected


def test_auto_keeps_torchs_own_count_capped_by_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's own count on four cores (an xdist worker of this suite starts torch on its share of them)
    monkeypatch.setattr(threads, "torch_default", lambda: 4)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    assert threads.use("1") == 1 and torch.get_num_threads() == 1
    assert threads.use("auto") == 4 and torch.get_num_threads() == 4  # not the 1 set just before
    monkeypatch.setattr(threads, "available_cores", lambda: 2)  # a cgroup quota of two cores
    assert threads.use("auto") == 2 and torch.get_num_threads() == 2


def test_under_xdist_torch_started_on_the_workers_share() -> None:
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        pytest.skip("runs in an xdist worker: conftest sets OMP_NUM_THREADS there before torch loads")
    assert threads.torch_default() == int(os.environ["OMP_NUM_THREADS"])


def test_auto_after_a_fixed_count_is_still_torchs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    threads.torch_default.cache_clear()
    torch.set_num_threads(3)  # as torch started, before this module set a count
    try:
        assert threads.use("1") == 1 and threads.use("auto") == 3
    finally:
        threads.torch_default.cache_clear()


@pytest.mark.parametrize(("cores", "workers", "share"), [(2, 2, 1), (8, 2, 4), (2, 4, 1), (4, 0, 4)])
def test_each_xdist_worker_gets_its_share_of_the_cores(cores: int, workers: int, share: int) -> None:
    from tests.conftest import threads_per_worker

    assert threads_per_worker(cores, workers) == share


def test_extraction_runs_on_its_encoders_count_and_reports_it(tiny_model_dir: Path) -> None:
    resolved = models.resolve(str(tiny_model_dir))
    one = features.load_encoder(resolved, "fp32", "1")
    own = features.load_encoder(resolved, "fp32", "auto")  # loading it set torch's count to its own
    extraction = features.extract(["a text", "another text"], one, progress=False)
    assert extraction.threads == 1 and torch.get_num_threads() == 1
    assert features.extract(["a text"], own, progress=False).threads == own.threads == torch.get_num_threads()
