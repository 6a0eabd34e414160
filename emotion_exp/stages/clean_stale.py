"""The clean-stale command: mark RUNNING runs whose process is gone as FAILED.

A process killed outright (SIGKILL, out of memory, a power cut) cannot end its MLflow run, so
the run stays RUNNING for ever. Every stage run records the ``host`` and ``pid`` of its process
(``tracking.stage_run``); a RUNNING run whose pid no longer exists on this host is stale. Runs
from another host cannot be checked from here and are left alone, as are runs without those
tags (not started by emotion-exp, or still being set up by ``mlflow run``).

The pid check is the operating system's (``os.kill(pid, 0)``): a pid that a later, unrelated
process reused counts as alive, so such a run is left alone rather than wrongly failed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

from emotion_exp import tracking
from emotion_exp.config import CleanStaleConfig

GONE = "gone"
ALIVE = "alive"
OTHER_HOST = "other host"
UNTRACKED = "untracked"


@dataclass(frozen=True)
class Verdict:
    """What clean-stale found about one RUNNING run."""

    run_id: str
    stage: str
    state: str  # GONE, ALIVE, OTHER_HOST or UNTRACKED
    detail: str


def process_state(tags: dict[str, str], host: str | None = None) -> tuple[str, str]:
    """Whether the process that owns a run (its ``host`` and ``pid`` tags) is still there.

    Returns the state and a phrase describing it for messages.
    """
    host = host or socket.gethostname()
    owner, pid_text = tags.get("host"), tags.get("pid", "")
    if not owner or not pid_text.isdigit():
        return UNTRACKED, "no host/pid tags (not started by emotion-exp, or not yet set up)"
    if owner != host:
        return OTHER_HOST, f"pid {pid_text} on host {owner!r}, which cannot be checked from {host!r}"
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return GONE, f"process {pid} on {host!r} is gone"
    except PermissionError:  # it exists, under another user
        return ALIVE, f"process {pid} on {host!r} is still running (another user's)"
    return ALIVE, f"process {pid} on {host!r} is still running"


def find_stale(experiment_id: str) -> list[Verdict]:
    """A verdict for every RUNNING run of the experiment, apart from the one ``mlflow run`` made for us."""
    own = tracking.launcher_run_id()
    verdicts = []
    for record in tracking.running_runs(experiment_id):
        if record.run_id == own:
            continue
        state, detail = process_state(record.tags)
        verdicts.append(Verdict(record.run_id, record.tags.get("stage", "?"), state, detail))
    return verdicts


def error_message(verdict: Verdict) -> str:
    """The ``error`` tag a stale run gets: what happened, and how to go on."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    message = (
        f"The run was still RUNNING but its {verdict.detail} (killed or crashed without ending the run); "
        f"marked FAILED by `emotion-exp clean-stale` at {when}."
    )
    if verdict.stage == "finetune":
        message += f" Continue it from its last checkpoint with `emotion-exp finetune --resume {verdict.run_id}`."
    return message


def run(config: CleanStaleConfig) -> list[str]:
    """Mark the stale runs of the current experiment FAILED (or only list them); return their ids.

    It opens no run of its own: it is housekeeping, and a run per call would clutter the
    experiment it cleans.
    """
    experiment_id = tracking.current_experiment_id()
    verdicts = find_stale(experiment_id)
    stale = [v for v in verdicts if v.state == GONE]
    where = f"experiment {tracking.experiment_name(experiment_id)!r} of {tracking.tracking_uri()}"
    print(f"clean-stale: {len(verdicts)} RUNNING run(s) in {where}; {len(stale)} stale.")
    for verdict in verdicts:
        if verdict.state == GONE:
            action = "would mark FAILED (dry run)" if config.dry_run else "marked FAILED"
            if not config.dry_run:
                tracking.fail_run(verdict.run_id, error_message(verdict))
        elif verdict.state == OTHER_HOST:
            action = "left alone: run clean-stale on that host"
        else:
            action = "left alone"
        print(f"  {verdict.run_id} ({verdict.stage}): {verdict.detail}; {action}.")
    return [v.run_id for v in stale]
