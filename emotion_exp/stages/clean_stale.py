"""The clean-stale command: mark RUNNING runs whose process is gone as FAILED.

A process killed outright (SIGKILL, out of memory, a power cut) cannot end its MLflow run, so
the run stays RUNNING for ever. Every stage run records who owns it (``tracking.owner_tags``:
host, pid, the kernel's boot id, the process namespace and the process's start time); a RUNNING
run whose process no longer exists on this machine is stale. A hostname alone does not say
which machine: a container with host networking, or a second machine with the same name, has
other processes under the same pids. So runs from another machine, boot or process namespace
are left alone, as are runs whose owner cannot be checked at all (no such tags: started by an
older emotion-exp, not by emotion-exp, or still being set up by ``mlflow run``), saying so.

Whether a process is alive is ``tracking.process_state``'s call: a pid that a later, unrelated
process reused (another start time) counts as gone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone

import mlflow
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, tracking
from emotion_exp.config import CleanStaleConfig


@dataclass(frozen=True)
class Verdict:
    """What clean-stale found about one RUNNING run."""

    run_id: str
    stage: str
    state: str  # tracking.GONE, ALIVE, OTHER_HOST or UNTRACKED
    detail: str


def find_stale(experiment_id: str) -> list[Verdict]:
    """A verdict for every RUNNING run of the experiment, apart from the one ``mlflow run`` made for us."""
    own = tracking.launcher_run_id()
    verdicts = []
    for record in tracking.running_runs(experiment_id):
        if record.run_id == own:
            continue
        state, detail = tracking.process_state(record.tags)
        verdicts.append(Verdict(record.run_id, record.tags.get("stage", "?"), state, detail))
    return verdicts


def error_message(verdict: Verdict) -> str:
    """The ``error`` tag a stale run gets: what happened, and how to go on."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    message = (
        f"The run was still RUNNING but its {verdict.detail} (killed or crashed without ending the run); "
        f"marked FAILED by `emotion-exp clean-stale` at {when}."
    )
    spec = catalog.STAGES.get(verdict.stage)
    resumable = spec is not None and "resume" in {f.name for f in fields(spec.config)}
    if resumable:  # finetune
        message += (
            f" Continue it from its last checkpoint with `emotion-exp {verdict.stage} --resume {verdict.run_id}`."
        )
    return message


def run(config: CleanStaleConfig) -> list[str]:
    """Mark the stale runs of the current experiment FAILED (or only list them); return their ids.

    It opens no run of its own: it is housekeeping, and a run per call would clutter the
    experiment it cleans.
    """
    experiment_id = tracking.current_experiment_id()
    verdicts = find_stale(experiment_id)
    stale = [v for v in verdicts if v.state == tracking.GONE]
    where = f"experiment {MlflowClient().get_experiment(experiment_id).name!r} of {mlflow.get_tracking_uri()}"
    print(f"clean-stale: {len(verdicts)} RUNNING run(s) in {where}; {len(stale)} stale.")
    for verdict in verdicts:
        if verdict.state == tracking.GONE:
            action = "would mark FAILED (dry run)" if config.dry_run else "marked FAILED"
            if not config.dry_run:
                tracking.fail_run(verdict.run_id, error_message(verdict))
        elif verdict.state == tracking.OTHER_HOST:
            action = "left alone: run clean-stale on that host"
        elif verdict.state == tracking.UNTRACKED:
            action = "left alone: its owner cannot be checked; if you know its process is gone, end the run yourself"
        else:
            action = "left alone"
        print(f"  {verdict.run_id} ({verdict.stage}): {verdict.detail}; {action}.")
    return [v.run_id for v in stale]
