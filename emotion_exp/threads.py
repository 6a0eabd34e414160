"""The intra-op thread count: torch's own, capped by the cores this process may use, or a fixed number.

OpenMP's idle threads are put to sleep at once (``OMP_WAIT_POLICY=PASSIVE``): with its default
spinning, two threads on two busy cores ran 10-17x slower than one. This module never imports mlflow.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

from emotion_exp.errors import UserError

AUTO = "auto"
WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_openmp() -> bool:
    """Let OpenMP's idle threads sleep at once (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    OpenMP's default spins a while before sleeping: when other processes want the cores, two
    threads then ran 10-17x slower than one.
    Passive, two threads beat one on a busy machine and cost 0-25% on a quiet one
    (``python -m benchmarks.openmp``). OpenMP reads the policy once, when torch loads it: returns
    whether it was set in time (not when torch is already imported or the variable is set).
    """
    if WAIT_POLICY in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY] = "PASSIVE"
    return True


def parse(threads: str | int) -> int | None:
    """``auto`` -> None (torch's own count); a positive whole number -> that count; anything else is a UserError."""
    text = str(threads).strip()
    if text == AUTO:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise UserError(f"--threads must be 'auto' or a whole number of at least 1; got {threads!r}.")


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 ``cpu.max`` or v1 CFS), None if unlimited."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


@functools.cache
def torch_default() -> int:
    """torch's own intra-op count, read once, before this module first sets one."""
    import torch

    return torch.get_num_threads()


def use(threads: str | int) -> int:
    """Set torch's intra-op thread count for ``threads`` and return the count in use.

    ``auto`` keeps torch's own count (one thread per core, or ``OMP_NUM_THREADS``; under torchrun
    each process's own), capped by the cores this process may use (a cgroup quota torch does not
    see). A measuring tuner once chose between counts batch by batch: with OpenMP's passive wait
    policy it never beat torch's own count by 10% in any condition of ``benchmarks.contention``
    (docs/performance.md), so the count is fixed for the whole run.
    """
    import torch

    own = torch_default()  # read before the first count is set, so a later ``auto`` still finds it
    fixed = parse(threads)
    count = fixed if fixed is not None else min(own, available_cores())
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
