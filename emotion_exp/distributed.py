"""Who is who under ``torchrun``: the rank and world size it sets, and the one message rank 0 sends.

Under ``torchrun --nproc_per_node N`` every process runs the same command. Rank 0 is the only
one that talks to MLflow; it opens the run and sends its id to the others, which train into
that run's checkpoint folder and log nothing. A plain ``python -m emotion_exp`` is world size 1
and nothing here does anything: no process group, nothing backend-specific.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from emotion_exp.errors import UserError

# Set by ``finetune --nproc_per_node N``: where rank 0 writes the id of the run it opened.
RUN_ID_FILE = "EMOTION_EXP_RUN_ID_FILE"


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE``, 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (``RANK``, 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process logs, writes and registers: rank 0, or the only process."""
    return rank() == 0


def backend() -> str | None:
    """The process-group backend for this run: NCCL on GPUs, gloo on CPUs; None for a single process."""
    if world_size() <= 1:
        return None
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> None:
    """Join the process group torchrun set up (a no-op for a single process or when already joined).

    Joined before the Trainer exists, so that rank 0 can send the run id first; the Trainer
    (through accelerate) then uses this group.
    """
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend())


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def announcing() -> Iterator[Callable[[str], None]]:
    """On rank 0: yield ``announce(run_id)``, which sends the run id to the other ranks (and to
    the ``RUN_ID_FILE`` of a ``--nproc_per_node`` launch).

    Leaving the block without announcing (rank 0 failed before its run opened) sends None, so
    the other ranks stop instead of waiting for a message that never comes.
    """
    sent = False

    def announce(run_id: str) -> None:
        nonlocal sent
        if world_size() > 1 and not sent:
            _broadcast(run_id)
        sent = True
        if os.environ.get(RUN_ID_FILE):
            Path(os.environ[RUN_ID_FILE]).write_text(run_id)

    try:
        yield announce
    finally:
        if world_size() > 1 and not sent:
            _broadcast(None)


def announced_run_id() -> str:
    """On the other ranks: the run id rank 0 announced; a ``UserError`` when rank 0 failed first."""
    run_id = _broadcast(None)
    if run_id is None:
        raise UserError(
            f"Rank 0 stopped before it opened its MLflow run; rank {rank()} stops too (see rank 0's error)."
        )
    return run_id
