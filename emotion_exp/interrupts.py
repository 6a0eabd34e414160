"""Ctrl-C and SIGTERM stop a stage, but never in the middle of a tracking-store write.

Python raises a signal handler's exception at whatever bytecode runs next. When that is inside
SQLAlchemy (MLflow's and Optuna's SQL stores), the interrupted session keeps its SQLite
connection, and its lock, alive in the traceback; the run then cannot be ended ("database is
locked" after MLflow's 20 s busy timeout) and is left RUNNING. So a signal that lands inside a
store call is raised as soon as that call returns, checked every ``RETRY_S`` seconds.

When it lands inside a weakref callback or a ``__del__`` (run wherever the garbage collector
frees an object), Python drops the exception with an "Exception ignored" message and the stage
goes on as if never stopped. Python hands such dropped exceptions to ``sys.unraisablehook``:
there the interrupt is caught and raised again ``RETRY_S`` later, outside the callback.

C code that calls back into Python and clears its errors drops it without a word (a Ctrl-C
landed in pandas' ``dtype == self.dtype`` of an Arrow string array and vanished; the handler
ignores further signals once it has raised). So the interrupt is also remembered until the
outermost handler is removed, and a run that would end FINISHED raises it
(``raise_if_swallowed``): the run that was cut ends as an interrupted run does.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from emotion_exp.errors import Terminated

RETRY_S = 0.02
"""How often a deferred interrupt checks whether the store call it waits for has returned."""

_STORE_MODULES = ("sqlalchemy.", "sqlite3", "psycopg", "mlflow.store.", "optuna.storages.")

_received: BaseException | None = None
"""The interrupt a handler raised, until the outermost ``handling`` block ends."""
_depth = 0
"""How many ``handling`` blocks are open (they nest: the CLI's, a sweep's, fine-tuning's)."""


def inside_store_call(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers runs code of a database driver or a tracking store."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_STORE_MODULES):
            return True
        frame = frame.f_back
    return False


def _raise_later(error: BaseException) -> None:
    """Raise ``error`` from a one-shot SIGALRM ``RETRY_S`` from now (``raise_when_safe`` then decides where)."""
    previous_alarm = signal.getsignal(signal.SIGALRM)

    def retry(signum: int, alarm_frame: FrameType | None) -> None:
        signal.signal(signal.SIGALRM, previous_alarm)
        raise_when_safe(error, alarm_frame)

    signal.signal(signal.SIGALRM, retry)
    signal.setitimer(signal.ITIMER_REAL, RETRY_S)


def _rescuing_dropped(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """A ``sys.unraisablehook`` that raises again a signal's interrupt that a callback dropped."""

    def hook(unraisable: Any) -> object:
        if getattr(unraisable.exc_value, _FROM_SIGNAL, False):
            _raise_later(unraisable.exc_value)
            return None
        return previous(unraisable)

    return hook


_FROM_SIGNAL = "_emotion_exp_from_signal"
"""Marks the interrupts this module raises, so that only those are rescued from callbacks."""


def raise_when_safe(error: BaseException, frame: FrameType | None) -> None:
    """From a signal handler: raise ``error`` now, or once the store call ``frame`` is inside returns;
    remembered for ``raise_if_swallowed`` either way.

    The retry rides on SIGALRM (a one-shot timer), the only way back into the main thread
    without polling from the code that was interrupted; the previous SIGALRM handler comes back
    before ``error`` is raised.
    """
    global _received
    setattr(error, _FROM_SIGNAL, True)
    _received = error
    if not inside_store_call(frame):
        raise error
    _raise_later(error)


def _stop(signum: int, frame: FrameType | None) -> None:
    # Further signals are ignored while the run ends: on Ctrl-C, `mlflow run` also sends SIGTERM,
    # which would otherwise cut the ending short and leave the launcher to mark the run FAILED.
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    name = signal.Signals(signum).name
    error = (
        KeyboardInterrupt()
        if signum == signal.SIGINT
        else Terminated(f"stopped by signal {name} (kill, or `mlflow run` cancelling the run)")
    )
    raise_when_safe(error, frame)


@contextlib.contextmanager
def handling(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` takes Ctrl-C and SIGTERM for the duration of the block; the previous ones come back.

    Only the main thread can take signals; elsewhere this does nothing.
    """
    global _depth, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _rescuing_dropped(previous_hook)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _received = None
        sys.unraisablehook = previous_hook
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


def raise_if_swallowed() -> None:
    """Raise the interrupt a handler raised, where a run would end FINISHED: it reaches that point only
    when code between the two dropped it (see the module docstring)."""
    if _received is not None:
        raise _received


def stop_on_signals() -> contextlib.AbstractContextManager[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM ``Terminated``, outside store calls.

    Every stage then ends its run KILLED with the reason (SIGTERM used to kill a stage with its
    run left RUNNING). Fine-tuning installs its own handler while it trains: it saves a
    checkpoint first.
    """
    return handling(_stop)
