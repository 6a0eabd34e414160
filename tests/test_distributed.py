"""finetune under torchrun: DDP over 2 gloo processes into exactly one MLflow run, stopped and resumed."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from emotion_exp import distributed, finetune
from emotion_exp.config import FinetuneConfig
from emotion_exp.errors import UserError
from tests import helpers
from tests.helpers import complete_checkpoints, emotion_exp, finish, history_steps, tiny_finetune, wait_for

EPOCHS, BATCH_SIZE, TRAIN_ROWS = 3, 8, 120
STEPS_PER_EPOCH = TRAIN_ROWS // BATCH_SIZE


def ranks(pid: int) -> list[int]:
    """The worker processes below ``pid`` (``emotion-exp`` -> torchrun -> ranks): those without children, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while it was read
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    below, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            below.append(child)
            todo.append(child)
    return [child for child in below if child not in children]


def is_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has stopped (SIGSTOP takes effect thread by thread)."""
    threads = Path(f"/proc/{pid}/task").glob("*/stat")
    return all(stat.read_text().rsplit(")", 1)[1].split()[0] == "T" for stat in threads)


def has_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be delivered to ``pid`` (a stopped process keeps it pending)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
    return bool(pending & (1 << (signum - 1)))


def test_a_single_process_sets_nothing_distributed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(distributed.RUN_ID_FILE, str(tmp_path / "run_id"))
    args = finetune.training_arguments(FinetuneConfig(batch_size=16), tmp_path, "fp32", steps_per_epoch=4)

    assert distributed.world_size() == 1 and distributed.backend() is None
    assert args.per_device_train_batch_size == 16 and args.ddp_backend is None
    assert args.average_tokens_across_devices is False
    with distributed.announcing() as announce:
        announce("abc123")
    assert (tmp_path / "run_id").read_text() == "abc123"


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--batch_size 15 is the batch of one step, split over the 2 processes"):
        finetune.training_arguments(FinetuneConfig(batch_size=15), tmp_path, "fp32", steps_per_epoch=4)


@pytest.mark.slow
def test_two_gloo_processes_train_into_one_run_that_stops_and_resumes(
    tmp_path: Path, small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchrun, two workers and the reference run share two cores: a wider bound on each wait.
    monkeypatch.setattr(helpers, "WAIT_S", 600)
    name = f"ddp-{uuid.uuid4().hex[:8]}"
    options = [*tiny_finetune(small_dataset, tiny_model_dir, EPOCHS, BATCH_SIZE), "--learning_rate", "0.001"]
    # The single-process reference run goes on alongside, on the same data and seed.
    reference = emotion_exp(
        *options, "--registered_model", "", "--output_dir", str(tmp_path / "reference"), log=tmp_path / "reference.log"
    )
    checkpoints = tmp_path / "checkpoints"
    ddp = [*options, "--registered_model", name, "--output_dir", str(checkpoints), "--nproc_per_node", "2"]

    # SIGTERM (what `mlflow run` sends on Ctrl-C) after the first epoch: both ranks stop after one step.
    log = tmp_path / "interrupted.log"
    process = emotion_exp(*ddp, log=log)
    wait_for(lambda: complete_checkpoints(checkpoints) != [], process, log, "a first checkpoint")
    # On a quiet machine the ranks finish the remaining epochs in about a second, faster than the
    # SIGTERM travels through torchrun: they are held until it reaches both, so the stop is certain.
    workers = ranks(process.pid)
    assert len(workers) == 2, workers
    for worker in workers:
        os.kill(worker, signal.SIGSTOP)
    # Only once every thread has stopped can SIGTERM not be taken before SIGSTOP (the kernel hands
    # out the lower number first); from then on it stays pending, where the test can see it.
    wait_for(lambda: all(is_stopped(w) for w in workers), process, log, "both ranks stopped")
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: all(has_pending(w, signal.SIGTERM) for w in workers), process, log, "SIGTERM at both ranks")
    for worker in workers:
        os.kill(worker, signal.SIGCONT)
    assert finish(process, log) != 0
    [run_folder] = checkpoints.iterdir()
    run_id = run_folder.name
    assert mlflow.get_run(run_id).info.status == "KILLED", log.read_text()[-3000:]
    assert complete_checkpoints(checkpoints)

    log = tmp_path / "resumed.log"
    process = emotion_exp(*ddp, "--resume", run_id, log=log)
    assert finish(process, log) == 0, log.read_text()[-3000:]
    assert "OMP_NUM_THREADS" not in log.read_text()  # torchrun's banner about setting it
    assert finish(reference, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-3000:]

    runs = {
        run.info.run_id: run for run in mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    }
    resumed = runs.pop(run_id)
    [single] = runs.values()  # the other ranks opened no run
    assert resumed.info.status == single.info.status == "FINISHED"
    assert resumed.data.params["world_size"] == "2" and single.data.params["world_size"] == "1"
    # --threads auto under torchrun keeps each process's OMP_NUM_THREADS (torchrun's 1 unless set).
    assert resumed.data.tags["threads_used"] == os.environ.get("OMP_NUM_THREADS", "1")
    epochs = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert history_steps(run_id, "eval_accuracy") == history_steps(single.info.run_id, "eval_accuracy") == epochs
    assert len(MlflowClient().get_metric_history(run_id, "eval_accuracy")) == EPOCHS  # logged once per epoch
    # Not doubled by averaging the token count over the processes.
    assert resumed.data.metrics["eval_loss"] == pytest.approx(single.data.metrics["eval_loss"], abs=0.1)
    [version] = MlflowClient().search_model_versions(f"name = '{name}'")
    assert version.run_id == run_id
    print(
        {m: (resumed.data.metrics[m], single.data.metrics[m]) for m in ("eval_loss", "val_accuracy", "test_accuracy")}
    )
    assert resumed.data.metrics["val_accuracy"] == pytest.approx(single.data.metrics["val_accuracy"], abs=0.05)
    # Rank 0 removed the checkpoint folder; nothing else was written next to it.
    assert list(checkpoints.iterdir()) == []
