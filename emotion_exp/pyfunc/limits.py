"""What one call to a model may hold and how long a served request may run: the serving limits.

The limits travel with every logged model in its ``model_config`` (``MAX_TEXTS``, ``MAX_CHARS``),
so a loader changes them where the model loads: ``mlflow.pyfunc.load_model(uri, model_config=
{"max_texts": N})``, or for ``mlflow models serve`` ``SERVING_MODEL_CONFIG='{"max_texts": N}'``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED

from emotion_exp import texts as text_rule

MAX_TEXTS = "max_texts"
DEFAULT_MAX_TEXTS = 10_000
MAX_CHARS = "max_chars"
LIMITS = {MAX_TEXTS: DEFAULT_MAX_TEXTS, MAX_CHARS: text_rule.DEFAULT_MAX_CHARS}
"""The limits' keys in a model's ``model_config`` and their logged defaults."""
SERVED_PART = 512
"""Texts a call predicts between two checks of its deadline."""


def max_chars(model_config: Mapping[str, Any]) -> int:
    """Characters one text may hold, as the model was loaded with."""
    return int(model_config.get(MAX_CHARS, text_rule.DEFAULT_MAX_CHARS))


def check_count(count: int, model_config: Mapping[str, Any]) -> None:
    """Refuse a call of more texts than the model's ``max_texts`` (an HTTP 400 in a server)."""
    limit = int(model_config.get(MAX_TEXTS, DEFAULT_MAX_TEXTS))
    if count > limit:
        raise MlflowException.invalid_parameter_value(
            f"Expected at most {limit} texts in one call; got {count}: send them in parts of {limit} or fewer "
            f'(the limit is the model_config "{MAX_TEXTS}", see docs/serving.md, Limits).'
        )


def deadline() -> float | None:
    """When a call must stop (``time.monotonic``): ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` seconds from now.

    ``mlflow models serve`` sets that variable for its server (``--timeout``, default 60 s) and
    answers 504 at the timeout, but lets the request's thread run on; a call that checks this
    between parts stops work nobody waits for. None where the variable is not set: no limit.
    """
    if not MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.defined:
        return None
    return time.monotonic() + float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())


def check_deadline(limit: float | None, done: int, total: int) -> None:
    """Stop a call that ran past ``limit`` (``deadline``) after ``done`` of its ``total`` texts: HTTP 504."""
    if limit is not None and time.monotonic() > limit:
        raise MlflowException(
            f"Stopped after {done} of {total} texts: the call ran past MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT "
            f"({MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()} s; a server's client got a 504 then): send fewer texts "
            "per request.",
            error_code=DEADLINE_EXCEEDED,
        )
