"""Names the MLflow store must accept, checked when a config is built, before any work starts.

A leaf module: the configs (``config.py``) check their fields with these, by MLflow's own
rules (``mlflow.utils.validation``), without reaching into the store-facing edge modules.
"""

from __future__ import annotations

from emotion_exp.errors import UserError


def check_registered_model_name(flag: str, name: str) -> None:
    """Refuse a registered model name that MLflow would refuse (``_validate_model_name``).

    Quotes and backslashes are refused too: versions are found by search filters, which they would break.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as error:
        raise UserError(f"{flag} {name!r} is not a valid registered model name: {error.message}") from None
    if any(character in name for character in "'\"`\\"):
        raise UserError(
            f"{flag} {name!r} holds a quote or backslash, which registered model names here may not; "
            "use letters, digits, '-', '_' and '.'."
        )


def check_run_id(flag: str, value: str) -> None:
    """Refuse what MLflow would not take as a run id (such as a path, '../x')."""
    from mlflow.utils.validation import _RUN_ID_REGEX

    if not _RUN_ID_REGEX.match(value):
        raise UserError(
            f"{flag} {value!r} is not an MLflow run id (letters, digits, '_' and '-', such as "
            "0123456789abcdef0123456789abcdef); copy the id from the run's page or `mlflow runs list`."
        )
