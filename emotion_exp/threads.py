"""The intra-op thread count, chosen by measuring rather than by counting cores.

One torch thread per core is fastest on a quiet machine and can be several times slower than one
thread when other processes want the same cores (OpenMP threads spin and wait on each other). So
``auto`` times a few batches at each candidate count, interleaved, keeps the one with the lowest
seconds per token, and measures again every few hundred batches or tens of seconds, following a
machine that becomes busy or quiet. A number fixes the count. This module never imports mlflow.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotion_exp.errors import UserError

if TYPE_CHECKING:
    from transformers import TrainerCallback

AUTO = "auto"
WAIT_POLICY = "OMP_WAIT_POLICY"
# Above this many cores only powers of two (and the core count) are tried: each try costs batches.
ALL_COUNTS_UP_TO = 8
# Training steps are fewer, longer and noisier trials than extraction batches (on a busy 2-core
# machine other processes slowed single two-thread steps up to 5.8x): three rounds, so the median
# outvotes one such step.
TRAINING_ROUNDS = 3


def prefer_passive_openmp() -> bool:
    """Let OpenMP's idle threads sleep at once (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    OpenMP's default spins a while before sleeping: when other processes want the cores, two
    threads then ran 10-17x slower than one, and even ``auto``'s trial of them cost whole seconds.
    Passive, two threads beat one on a busy machine and cost 0-25% on a quiet one
    (``python -m benchmarks.openmp``). OpenMP reads the policy once, when torch loads it: returns
    whether it was set in time (not when torch is already imported or the variable is set).
    """
    if WAIT_POLICY in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY] = "PASSIVE"
    return True


def parse(threads: str | int) -> int | None:
    """``auto`` -> None (measure); a positive whole number -> that count; anything else is a UserError."""
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


def candidates(cores: int) -> list[int]:
    """Thread counts worth trying on ``cores`` cores: each of 1..cores, or powers of two and ``cores`` above 8."""
    if cores <= ALL_COUNTS_UP_TO:
        return list(range(1, cores + 1))
    return sorted({2**k for k in range(int(math.log2(cores)) + 1)} | {cores})


class ThreadTuner:
    """Sets torch's intra-op thread count before each unit of work (a batch, a training step).

    With ``threads="auto"`` it measures: after ``warmup`` unrecorded units on one thread,
    ``rounds`` interleaved passes over the candidate counts (each in the reverse order of the one
    before), one unit each, dropping a candidate as soon as it costs more than ``drop_above``
    times the best so far (under OpenMP's default wait policy two threads on a busy machine ran
    10-17x slower than one: one such unit is enough to know; a unit merely slowed by other
    processes stays below it). It keeps
    the count with the lowest median seconds per work unit (e.g. per token) until
    ``every_batches`` units or ``every_seconds`` seconds have passed, and then measures again,
    but never spends more than ``budget`` of the time measuring: what the last measurement cost
    beyond running the best count sets the earliest next one. ``chosen`` lists the count each
    measurement settled on, in order (the fixed count alone where there is nothing to choose).
    """

    def __init__(
        self,
        threads: str | int = AUTO,
        *,
        cores: int | None = None,
        rounds: int = 2,
        warmup: int = 1,
        every_batches: int = 300,
        every_seconds: float = 30.0,
        drop_above: float = 8.0,
        budget: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.fixed = parse(threads)
        self.candidates = [self.fixed] if self.fixed else candidates(cores or available_cores())
        self.rounds, self.warmup, self.drop_above, self.budget = rounds, warmup, drop_above, budget
        self.every_batches, self.every_seconds, self.clock = every_batches, every_seconds, clock
        self.chosen: list[int] = []
        self.measurements = 0
        self._current = self.fixed or 1
        self._trials: list[int] = []
        self._costs: dict[int, list[float]] = {}
        self._overhead = 0.0
        self._since_batches, self._since_time, self._wait = 0, 0.0, 0.0
        self._lock = threading.Lock()
        if len(self.candidates) == 1:  # nothing to choose between
            self.chosen = [self.candidates[0]]
            self._current = self.candidates[0]
        else:
            self._start_measuring()

    @property
    def threads(self) -> int:
        """The count the next unit of work runs with when no measurement is under way."""
        return self._current

    def _start_measuring(self) -> None:
        # Each round in the reverse order of the one before (1, 2, 2, 1): units of work drift in size
        # (batches sorted by length, training steps grouped by length), and a fixed order would give
        # the first count the larger units, which look cheaper per token.
        self._trials = [count for round_ in range(self.rounds) for count in self.candidates[:: -1 if round_ % 2 else 1]]
        self._costs = {count: [] for count in self.candidates}
        self._overhead = 0.0
        self.measurements += 1

    def begin(self) -> tuple[int, float]:
        """Set the thread count for the next unit of work; return it and the unit's start time for ``end``."""
        import torch

        with self._lock:
            threads = self._trials[0] if self._trials and self.warmup <= 0 else self._current
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return threads, self.clock()

    def end(self, threads: int, started: float, units: float = 1.0) -> None:
        """Record a unit of work begun at ``started`` on ``threads`` (``units``: its size, e.g. tokens)."""
        seconds = self.clock() - started
        with self._lock:  # a server may predict from several threads at once
            if self.warmup > 0:
                self.warmup -= 1
            elif self._trials and threads == self._trials[0]:
                self._record(threads, seconds, max(units, 1e-9))
                return
            self._since_batches += 1
            elapsed = self.clock() - self._since_time
            due = self._since_batches >= self.every_batches or elapsed >= self.every_seconds
            if len(self.candidates) > 1 and not self._trials and due and elapsed >= self._wait:
                self._start_measuring()

    def _record(self, threads: int, seconds: float, units: float) -> None:
        self._trials.pop(0)
        cost = seconds / units
        self._costs[threads].append(cost)
        best = min(min(costs) for costs in self._costs.values() if costs)
        self._overhead += seconds - best * units
        if cost > self.drop_above * best:  # clearly slower: no more units on it this time
            self._trials = [count for count in self._trials if count != threads]
        if not self._trials:
            self._settle()

    def _settle(self) -> None:
        measured = {count: costs for count, costs in self._costs.items() if costs}
        self._current = min(measured, key=lambda count: statistics.median(measured[count]))
        self.chosen.append(self._current)
        self._since_batches, self._since_time = 0, self.clock()
        # At most ``budget`` of the time goes to measuring: a costly measurement waits longer for the next.
        self._wait = self._overhead / self.budget

    @contextlib.contextmanager
    def measure(self, units: float) -> Iterator[int]:
        """``begin`` and ``end`` around one unit of work of size ``units``; yields the thread count."""
        threads, started = self.begin()
        yield threads
        self.end(threads, started, units)


def trainer_callback(tuner: ThreadTuner, tokens: TokenCounts) -> TrainerCallback:
    """A Trainer callback that runs each optimizer step under ``tuner``, weighted by the step's tokens."""
    from transformers import TrainerCallback

    class _TuneThreads(TrainerCallback):
        step: tuple[int, float] | None = None

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            tokens.clear()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step = tuner.begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.step is not None:
                tuner.end(*self.step, tokens.pop())
                self.step = None

    return _TuneThreads()


class TokenCounts:
    """Token counts of the batches a collator produced, oldest first.

    The data loader may collate a batch ahead of the step that trains on it, so a step takes the
    oldest count, not the latest.
    """

    def __init__(self) -> None:
        self._counts: collections.deque[int] = collections.deque()
        self._last = 1

    def add(self, count: int) -> None:
        self._counts.append(count)

    def pop(self) -> float:
        """The oldest count not taken yet (the last one taken if none is left)."""
        if self._counts:
            self._last = self._counts.popleft()
        return float(self._last)

    def clear(self) -> None:
        self._counts.clear()
