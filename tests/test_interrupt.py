"""Interrupted runs lose nothing: Ctrl-C and SIGKILL on a real `emotion-exp finetune` process,
`clean-stale` for runs whose process is gone, and `--resume` into the same run.

The slow test drives real processes on the tiny model: one run is stopped by SIGINT, resumed,
killed outright, cleaned up and resumed again, and must end like a run that was never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from emotion_exp import tracking
from emotion_exp.cli import cli
from tests.helpers import (
    EPOCHS,
    STEPS_PER_EPOCH,
    complete_checkpoints,
    dead_pid,
    emotion_exp,
    finish,
    history_steps,
    make_run,
    owned_by,
    run_of_pid,
    tiny_finetune,
    wait_for,
)


def test_clean_stale_fails_only_runs_whose_process_is_gone() -> None:
    gone = make_run({"stage": "finetune", **owned_by(dead_pid())})
    alive = make_run({"stage": "dummy", **owned_by(os.getpid())})
    elsewhere = make_run({"stage": "dummy", **owned_by(1, host="another-host", boot_id="another-boot")})
    untagged = make_run({})
    finished = make_run({"stage": "dummy", **owned_by(dead_pid())}, status="FINISHED")

    dry = CliRunner().invoke(cli, ["clean-stale", "--dry_run", "true"])
    assert dry.exit_code == 0, dry.output
    assert f"{gone} (finetune): process" in dry.output and "would mark FAILED (dry run)" in dry.output
    assert mlflow.get_run(gone).info.status == "RUNNING"

    result = CliRunner().invoke(cli, ["clean-stale"])

    assert result.exit_code == 0, result.output
    assert "4 RUNNING run(s)" in result.output and "1 stale" in result.output
    assert f"{elsewhere} (dummy): pid 1 on host 'another-host' (another machine" in result.output
    assert "run clean-stale on that host" in result.output
    assert f"{untagged} (?): no host/pid tags" in result.output
    statuses = {run_id: mlflow.get_run(run_id).info.status for run_id in (gone, alive, elsewhere, untagged, finished)}
    assert statuses == {
        gone: "FAILED",
        alive: "RUNNING",
        elsewhere: "RUNNING",
        untagged: "RUNNING",
        finished: "FINISHED",
    }
    error = mlflow.get_run(gone).data.tags["error"]
    assert "is gone" in error and f"emotion-exp finetune --resume {gone}" in error
    assert "error" not in mlflow.get_run(alive).data.tags


def test_clean_stale_tells_machines_and_containers_that_share_a_hostname_apart() -> None:
    # The same hostname and pid, but another machine (boot id) or a container's own pids (namespace):
    # the pid here says nothing about that process, so those runs are left alone.
    other_machine = make_run({"stage": "dummy", **owned_by(dead_pid(), boot_id="another-boot")})
    other_container = make_run({"stage": "dummy", **owned_by(dead_pid(), pid_namespace="pid:[1]")})
    # This process's pid, started at another time: its pid was reused, the run's process is gone.
    reused = make_run({"stage": "dummy", **owned_by(os.getpid(), pid_started="1")})
    # Only host and pid (an older emotion-exp): its owner cannot be checked, and the output says so.
    older = make_run({"stage": "dummy", "host": socket.gethostname(), "pid": str(dead_pid())})

    result = CliRunner().invoke(cli, ["clean-stale"])

    assert result.exit_code == 0, result.output
    assert "4 RUNNING run(s)" in result.output and "1 stale" in result.output
    assert f"{reused} (dummy): process {os.getpid()}" in result.output and "started later" in result.output
    assert f"{older} (dummy): pid" in result.output and "its owner cannot be checked" in result.output
    statuses = {run_id: mlflow.get_run(run_id).info.status for run_id in (other_machine, other_container, older)}
    assert set(statuses.values()) == {"RUNNING"}
    assert mlflow.get_run(reused).info.status == "FAILED"


def test_a_stage_run_records_its_owner_so_it_counts_as_alive_while_it_runs(isolated_mlflow: str) -> None:
    with tracking.stage_run("dummy", {}) as run:
        tags = mlflow.get_run(run.info.run_id).data.tags
        assert {"host", "pid", "boot_id", "pid_namespace", "pid_started"} <= set(tags)
        assert tracking.process_state(tags)[0] == tracking.ALIVE


def test_clean_stale_under_mlflow_run_fails_a_stale_run_but_not_its_own_launcher_run(monkeypatch) -> None:
    """`mlflow run -e clean-stale` hands the stage the run it made (``MLFLOW_RUN_ID``): never judged stale, even
    when its owner tags name a gone process."""
    stale = make_run({"stage": "dummy", **owned_by(dead_pid())})
    launcher = make_run({"mlflow.project.entryPoint": "clean-stale", **owned_by(dead_pid())})
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)

    result = CliRunner().invoke(cli, ["clean-stale"])

    assert result.exit_code == 0, result.output
    assert f"{stale} (dummy): process" in result.output and "marked FAILED" in result.output
    assert mlflow.get_run(stale).info.status == "FAILED"
    assert mlflow.get_run(launcher).info.status == "RUNNING"


# --- real processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_resume_ends_like_an_uninterrupted_run(
    tmp_path: Path, small_dataset: Path, tiny_model_dir: Path
) -> None:
    options = [*tiny_finetune(small_dataset, tiny_model_dir), "--registered_model", ""]
    # The uninterrupted reference run goes on alongside (two cores: the waits are bounded, not timed).
    reference = emotion_exp(*options, "--output_dir", str(tmp_path / "reference"), log=tmp_path / "reference.log")
    checkpoints = tmp_path / "checkpoints"
    stopped = [*options, "--output_dir", str(checkpoints)]

    # 1. Ctrl-C after the first epoch's checkpoint: the run ends KILLED, a checkpoint stays, the hint says how to go on.
    log = tmp_path / "interrupted.log"
    process = emotion_exp(*stopped, log=log)
    # While it runs, a second process may not resume into the same run.
    wait_for(lambda: run_of_pid(process.pid) is not None, process, log, "its run")
    twice = CliRunner().invoke(cli, [*stopped, "--resume", run_of_pid(process.pid)], env={"EMOTION_EXP_DEBUG": None})
    assert twice.exit_code == 1 and f"process {process.pid} on" in twice.output and "still RUNNING" in twice.output
    wait_for(lambda: complete_checkpoints(checkpoints) != [], process, log, "a first checkpoint")
    process.send_signal(signal.SIGINT)
    assert finish(process, log) == 130, log.read_text()[-3000:]
    [run_folder] = checkpoints.iterdir()
    run_id = run_folder.name
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["error"]
    assert complete_checkpoints(checkpoints), "the last checkpoint is kept"
    output = log.read_text()
    assert "Traceback" not in output
    assert f"emotion-exp finetune --resume {run_id}" in output

    # 2. Resume, then SIGKILL after the second epoch's checkpoint: nobody ends the run, it stays RUNNING.
    log = tmp_path / "killed.log"
    process = emotion_exp(*stopped, "--resume", run_id, log=log)
    wait_for(
        lambda: complete_checkpoints(checkpoints)[-1:] == [2 * STEPS_PER_EPOCH],
        process,
        log,
        "the second epoch's checkpoint",
    )
    process.send_signal(signal.SIGKILL)
    assert finish(process, log) == -signal.SIGKILL
    assert mlflow.get_run(run_id).info.status == "RUNNING"
    # A kill can also land in the middle of a save: the next checkpoint then holds only its model files.
    partial = run_folder / f"checkpoint-{EPOCHS * STEPS_PER_EPOCH}"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run_folder / f"checkpoint-{2 * STEPS_PER_EPOCH}" / name, partial / name)

    # 3. clean-stale finds the run's process gone and fails the run, saying how to resume.
    cleaned = CliRunner().invoke(cli, ["clean-stale"])
    assert cleaned.exit_code == 0, cleaned.output
    assert f"{run_id} (finetune): process {process.pid}" in cleaned.output and "marked FAILED" in cleaned.output
    run = mlflow.get_run(run_id)
    assert run.info.status == "FAILED"
    assert f"--resume {run_id}" in run.data.tags["error"]

    # 4. Resume again: the run finishes from the last complete checkpoint.
    log = tmp_path / "resumed.log"
    process = emotion_exp(*stopped, "--resume", run_id, log=log)
    assert finish(process, log) == 0, log.read_text()[-3000:]
    assert finish(reference, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-3000:]

    runs = {run.info.run_id: run for run in mlflow.search_runs(output_format="list")}
    resumed = runs.pop(run_id)
    [uninterrupted] = runs.values()
    assert resumed.info.status == uninterrupted.info.status == "FINISHED"
    assert "error" not in resumed.data.tags  # what interrupted it no longer describes the finished run
    assert resumed.data.tags["resumed_from"].endswith(f"checkpoint-{2 * STEPS_PER_EPOCH}")
    epochs = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert history_steps(run_id, "eval_loss") == history_steps(uninterrupted.info.run_id, "eval_loss") == epochs
    print(
        {
            name: (resumed.data.metrics[name], uninterrupted.data.metrics[name])
            for name in ("eval_loss", "val_accuracy", "val_f1_weighted", "test_accuracy")
        }
    )
    assert resumed.data.metrics["eval_loss"] == pytest.approx(uninterrupted.data.metrics["eval_loss"], abs=0.01)
    for name in ("val_accuracy", "val_f1_weighted", "test_accuracy", "test_f1_weighted"):
        assert resumed.data.metrics[name] == pytest.approx(uninterrupted.data.metrics[name], abs=0.05)
    # Texts longer than --max_length were cut and counted, not refused.
    assert resumed.data.metrics["truncated_train"] == uninterrupted.data.metrics["truncated_train"] > 0
