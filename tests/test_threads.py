"""--threads: the count auto picks is one of the candidates and the fastest measured, a fixed count is
respected, measurement happens again after enough batches or seconds, and the Trainer follows it too."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emotion_exp import features, finetune, models, threads
from emotion_exp.config import EncoderConfig, FinetuneConfig, PredictConfig
from emotion_exp.errors import UserError
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class WorkClock:
    """A clock that advances, per unit of work, by the cost of the thread count torch is set to."""

    def __init__(self, seconds_per_unit: dict[int, float]) -> None:
        self.seconds_per_unit = seconds_per_unit
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, tuner: threads.ThreadTuner, units: float) -> int:
        with tuner.measure(units) as count:
            assert torch.get_num_threads() == count
            self.now += self.seconds_per_unit[count] * units
        return count


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


def test_candidates_are_every_count_on_small_machines_and_powers_of_two_on_large_ones() -> None:
    assert (
        threads.candidates(1) == [1] and threads.candidates(2) == [1, 2] and threads.candidates(8) == list(range(1, 9))
    )
    assert threads.candidates(24) == [1, 2, 4, 8, 16, 24]


def test_auto_picks_the_fastest_candidate_drops_clear_losers_and_measures_again_after_enough_batches() -> None:
    clock = WorkClock({1: 1.0, 2: 12.0, 3: 10.0})  # a busy machine with OpenMP spinning: one thread is fastest
    tuner = threads.ThreadTuner(
        cores=3, rounds=2, warmup=1, every_batches=10, every_seconds=1e9, budget=math.inf, clock=clock
    )
    used = [clock.work(tuner, units=4) for _ in range(1 + 4)]
    # Warm-up on one thread; then 1, 2 and 3 once each: 2 and 3 cost over 8x the best, so only 1 runs again.
    assert used == [1, 1, 2, 3, 1] and tuner.chosen == [1] and tuner.threads == 1
    used = [clock.work(tuner, units=4) for _ in range(10)]
    assert used == [1] * 10 and tuner.measurements == 2  # the 10th settled batch starts a new measurement
    clock.seconds_per_unit = {1: 3.0, 2: 1.0, 3: 2.0}  # the machine became quiet: no count is that far behind
    used = [clock.work(tuner, units=4) for _ in range(6 + 2)]
    assert used == [1, 2, 3, 3, 2, 1, 2, 2] and tuner.chosen == [1, 2]  # the second round in reverse order


def test_costs_are_compared_per_unit_of_work_so_long_batches_do_not_lose() -> None:
    clock = WorkClock({1: 2.0, 2: 1.0})
    tuner = threads.ThreadTuner(cores=2, rounds=1, warmup=0, clock=clock)
    with tuner.measure(1):  # 1 thread on a short batch: 2 s
        clock.now += 2.0
    with tuner.measure(10):  # 2 threads on a batch ten times longer: 10 s, yet faster per token
        clock.now += 10.0
    assert tuner.chosen == [2]


def test_rounds_alternate_their_order_so_shrinking_training_steps_do_not_favour_the_first_count() -> None:
    clock = WorkClock({})
    tuner = threads.ThreadTuner(cores=2, rounds=2, warmup=0, clock=clock)
    # Length-grouped training steps shrink one after another; a step costs a fixed 60 ms (the
    # optimizer's update) plus its tokens, and two threads are 10% faster at both.
    for tokens in (448, 336, 240, 176):
        with tuner.measure(tokens) as count:
            clock.now += (0.06 + 0.0002 * tokens) * (0.9 if count == 2 else 1.0)
    assert tuner.chosen == [2]


def test_one_step_slowed_by_other_processes_is_outvoted_and_not_dropped() -> None:
    # Two threads are 20% faster, but other processes stall one of their steps 5x (a busy 2-core
    # machine slowed single steps up to 5.8x): a collapse is dropped at once, a stall is not.
    clock = WorkClock({})
    tuner = threads.ThreadTuner(cores=2, rounds=threads.TRAINING_ROUNDS, warmup=0, clock=clock)
    used = []
    for step in range(2 * threads.TRAINING_ROUNDS):
        with tuner.measure(300) as count:
            stalled = 5.0 if (count == 2 and step == 1) else 1.0
            clock.now += 0.3 * (0.8 if count == 2 else 1.0) * stalled
        used.append(count)
    assert used == ([1, 2, 2, 1] * threads.TRAINING_ROUNDS)[: 2 * threads.TRAINING_ROUNDS] and tuner.chosen == [2]


def test_measurement_restarts_after_enough_seconds_but_spends_at_most_its_budget() -> None:
    clock = WorkClock({1: 1.0, 2: 1.2})  # close: both counts are measured twice
    tuner = threads.ThreadTuner(
        cores=2, rounds=2, warmup=0, every_batches=10**6, every_seconds=5.0, budget=0.1, clock=clock
    )
    for _ in range(4):
        clock.work(tuner, units=10)
    assert tuner.measurements == 1 and tuner.chosen == [1]
    # Measuring cost 2 x (1.2 - 1.0) x 10 = 4 s beyond the best: the next waits 4 / 0.1 = 40 s, not 5 s.
    for _ in range(3):
        clock.work(tuner, units=10)  # 30 s
    assert tuner.measurements == 1
    clock.work(tuner, units=10)  # 40 s
    assert tuner.measurements == 2


def test_a_fixed_count_is_respected_and_never_measured() -> None:
    clock = WorkClock({3: 1.0})
    tuner = threads.ThreadTuner("3", every_batches=1, every_seconds=0.0, clock=clock)
    assert [clock.work(tuner, units=1) for _ in range(5)] == [3] * 5
    assert tuner.chosen == [3] and tuner.measurements == 0


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


def test_extraction_reports_the_counts_its_tuner_chose(tiny_model_dir: Path) -> None:
    resolved = models.resolve(str(tiny_model_dir))
    fixed = features.extract(["a text", "another text"], features.load_encoder(resolved, "fp32", "1"), progress=False)
    assert fixed.threads == [1] and torch.get_num_threads() == 1
    encoder = features.load_encoder(resolved, "fp32", "auto")
    encoder = features.Encoder(
        encoder.tokenizer, encoder.model, "fp32", encoder.device, threads.ThreadTuner(cores=2, rounds=1, warmup=0)
    )
    many = features.extract([f"text number {i}" for i in range(8)], encoder, batch_size=1, progress=False)
    assert many.threads and set(many.threads) <= {1, 2} and encoder.tuner.measurements >= 1


def test_the_trainer_measures_at_step_boundaries(tiny_model_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    resolved = models.resolve(str(tiny_model_dir))
    tokenizer = models.load_tokenizer(resolved)
    texts = [f"i feel {'very ' * (i % 5)}happy number {i}" for i in range(48)]
    rows, _ = finetune.examples(texts, [i % 2 for i in range(48)], tokenizer, 32)
    config = FinetuneConfig(model=str(tiny_model_dir), batch_size=8, epochs=1, threads="auto")
    args = dataclasses.replace(
        finetune.training_arguments(config, tmp_path, "fp32", steps_per_epoch=6),
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        logging_first_step=False,
    )
    # Real timings: no candidate is dropped and no budget delays the next measurement, so the count is exact.
    tuner = threads.ThreadTuner(cores=2, rounds=2, warmup=1, every_batches=1, drop_above=math.inf, budget=math.inf)
    trainer = finetune.make_trainer(finetune.load_classifier(resolved, ["a", "b"]), tokenizer, args, rows, tuner=tuner)
    trainer.train()
    # 6 steps: one warm-up, four measured (1, 2, 2, 1), one settled, which starts the next measurement.
    assert len(tuner.chosen) == 1 and tuner.chosen[0] in (1, 2) and tuner.measurements == 2
