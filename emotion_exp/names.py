"""Names the MLflow store must accept, checked when a config is built, before any work starts.

A leaf module: the configs (``config.py``) check their fields with these rules, written down
here from what MLflow's client accepts (its messages state them), so a mistake is refused
before a stage runs instead of by the store after its work. ``tests/test_names.py`` holds each
rule against a real store (``create_registered_model``, ``get_run``), so a release of MLflow
that changes one fails that test instead of drifting apart from it silently.
"""

from __future__ import annotations

import re

from emotion_exp.errors import UserError

RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")
"""An MLflow run id: a letter or digit, then up to 255 word characters or '-' (ids MLflow makes are 32 hex digits)."""
QUOTES = "'\"`\\"
"""Refused in registered model names here though MLflow takes them: versions are found by search filters,
which a quote or backslash would break."""


def check_registered_model_name(flag: str, name: str) -> None:
    """Refuse a registered model name that MLflow would refuse, or that holds a quote or backslash.

    MLflow's rules: not blank; no '/' or ':'; and, as a name may be stored as a path, nothing that
    resolves to another path ('.', or a name starting with '..').
    """
    invalid = "is not a valid registered model name:"
    if not name.strip():
        problem = f"{invalid} it is empty"
    elif "/" in name or ":" in name:
        problem = f"{invalid} names cannot contain '/' or ':'"
    elif name == "." or name.startswith(".."):
        problem = f"{invalid} MLflow may keep a name as a path, so it must not resolve to other names ('.', '..' first)"
    elif any(character in name for character in QUOTES):
        problem = "holds a quote or backslash, which registered model names here may not"
    else:
        return
    raise UserError(f"{flag} {name!r} {problem}; use letters, digits, '-', '_' and '.'.")


def check_run_id(flag: str, value: str) -> None:
    """Refuse what MLflow would not take as a run id (such as a path, '../x')."""
    if not RUN_ID.fullmatch(value):
        raise UserError(
            f"{flag} {value!r} is not an MLflow run id (letters, digits, '_' and '-', such as "
            "0123456789abcdef0123456789abcdef); copy the id from the run's page or `mlflow runs list`."
        )
