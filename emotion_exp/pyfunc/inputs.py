"""The input contract of every text -> label model: what a call takes, what it refuses, what comes back.

A model takes a list of texts or a table with a ``text`` column and returns ``label`` plus one
probability column per label name (``prob_<label>``). Its signature (``signature``) declares the
output and the param ``skip_empty`` but no input schema, so MLflow hands ``predict`` what a
request holds whole: a table with all its columns, a list, an array of any shape or a dict of
columns. ``text_input`` checks it there and refuses what is no text with an ``MlflowException``
of ``INVALID_PARAMETER_VALUE``, which ``mlflow models serve`` answers with a 400. These are
MLflow's supported routes: the server itself is not touched, so what MLflow does to a request
before any model code runs stays as MLflow does it (docs/reliability.md lists what that costs).

No ``from __future__ import annotations`` here: MLflow reads the type hint of the wrapped
``predict`` (``pd.DataFrame``: no type-hint validation of its own) as an object.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from emotion_exp import texts as text_rule
from emotion_exp.contract import probability_column
from emotion_exp.pyfunc import limits

TEXT_COLUMN = "text"
SKIP_EMPTY = "skip_empty"
OUTPUT = "output"
"""The ``model_config`` key of what ``predict`` returns: ``table`` (logged), or ``label`` for MLflow's evaluator."""
TABLE, LABEL = "table", "label"
PAYLOAD_SHAPES = (
    '{"inputs": ["text", ...]}, {"dataframe_records": [{"text": "..."}, ...]}, '
    '{"dataframe_split": {"columns": ["text"], "data": [["..."], ...]}} or a Parquet table with a text column'
)


def texts_from_input(model_input: Any, skip_empty: bool = False, max_chars: int | None = None) -> list[str]:
    """Accept a table or dict with a ``text`` column, or a flat list of strings; refuse anything else.

    What MLflow hands over without an input schema: a request's table with all its columns (the
    ``text`` column is taken by name, in any position), a JSON list as a numpy array (a string
    as a 0-d array, rows of one value as an ``(n, 1)`` array), ``{"inputs": {"text": [...]}}``
    and ``instances`` records as a dict of columns; a Python caller's list, Series or DataFrame as
    it is. Rows of several values (a 2-D array or a table of unnamed columns) are refused, never
    cut to their first value. Nulls, numbers, lists and other non-text values are refused with
    their row numbers, and so are empty or whitespace-only texts unless ``skip_empty`` (the rule of
    ``emotion_exp.texts``, the same as for files); so are texts longer than ``max_chars``
    characters, before any tokenizer sees them.
    """
    values = [str(value) if isinstance(value, str) else value for value in _column(model_input)]
    found = text_rule.problems(values, max_chars=max_chars)
    if found.refused(skip_empty):
        raise MlflowException.invalid_parameter_value(
            f"Expected every text to be a non-empty string; found {found.describe('row', skip_empty)} (rows count "
            f"from 0): send only strings{_hint(found, values, skip_empty, max_chars)}."
        )
    return values


def _column(model_input: Any) -> list[Any]:
    """The values that should be texts, one per row, from whatever shape ``texts_from_input`` takes."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            column = model_input[TEXT_COLUMN]
            if isinstance(column, pd.DataFrame):
                raise _refused(f"{column.shape[1]} columns named '{TEXT_COLUMN}'")
            return column.tolist()
        if list(model_input.columns) == [0]:  # dataframe_split rows of one value without "columns"
            return model_input[0].tolist()
        found = list(model_input.columns)
        unnamed = all(isinstance(name, (int, np.integer)) for name in found)
        raise _refused(f"rows of {len(found)} values without column names" if unnamed else f"the columns {found[:5]}")
    if isinstance(model_input, Mapping):
        if TEXT_COLUMN not in model_input:
            raise _refused(f"an object with the keys {list(model_input)[:5]}")
        column = model_input[TEXT_COLUMN]
        return _column(column) if isinstance(column, (np.ndarray, pd.Series, list, tuple)) else [column]
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 2 and model_input.shape[1] == 1:
            return model_input[:, 0].tolist()
        if model_input.ndim > 1:
            raise _refused(f"rows of several values (an array of shape {model_input.shape})")
        return np.atleast_1d(model_input).tolist()
    if isinstance(model_input, (pd.Series, list, tuple)):
        return list(model_input)
    if isinstance(model_input, str):
        return [model_input]
    raise MlflowException.invalid_parameter_value(
        f"Expected a DataFrame with a '{TEXT_COLUMN}' column or a list of strings; got {type(model_input).__name__}."
    )


def _refused(found: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(
        f"Expected a list of texts or a table with a '{TEXT_COLUMN}' column; found {found}: send {PAYLOAD_SHAPES}, "
        "one text per row."
    )


def _hint(found: text_rule.TextProblems, values: list[Any], skip_empty: bool, max_chars: int | None) -> str:
    """How to fix what ``found`` names: ``skip_empty`` is offered only where it would help (empty texts)."""
    hint = ""
    if any(isinstance(values[row], (list, tuple, dict, np.ndarray)) for row in found.not_text):
        hint += f", one per row (a list or an object is no text: send {PAYLOAD_SHAPES})"
    if found.empty and not skip_empty:
        hint += f', or pass the param {{"{SKIP_EMPTY}": true}} to give empty texts an empty label'
    elif found.not_text and skip_empty:
        hint += f' ("{SKIP_EMPTY}" labels empty strings, not nulls: send "" for a missing text)'
    if found.too_long:
        hint += f'; split or shorten texts over {max_chars:,} characters (the limit is the model_config "max_chars")'
    return hint


def text_input(predict: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame | pd.Series]:
    """Wrap a model's ``predict``: check the input and the params, cap the texts, and skip empty texts if asked.

    The wrapped ``predict`` gets the non-empty texts as a list of strings (its ``model_input``);
    rows skipped by ``skip_empty`` come back with an empty label and empty probabilities. The
    limits (``limits.MAX_TEXTS``, ``limits.MAX_CHARS``) come from the model's ``model_config``, and
    so does what comes back (``OUTPUT``, see ``shaped``). Where a call must stop by a deadline
    (``limits.deadline``), the texts are predicted in parts of ``limits.SERVED_PART`` and the
    deadline is checked between them.
    """

    @functools.wraps(predict, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    def checked(
        self: Any, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame | pd.Series:
        skip_empty = bool((params or {}).get(SKIP_EMPTY, False))
        model_config = getattr(context, "model_config", None) or {}
        output = output_of(model_config)
        texts = texts_from_input(model_input, skip_empty=skip_empty, max_chars=limits.max_chars(model_config))
        limits.check_count(len(texts), model_config)
        keep = np.fromiter((not text_rule.blank(text) for text in texts), dtype=bool, count=len(texts))
        kept = [text for text, kept in zip(texts, keep) if kept]
        deadline = limits.deadline()
        if deadline is None or len(kept) <= limits.SERVED_PART:
            return shaped(with_skipped_rows(predict(self, context, kept, params), keep), output)
        parts = []
        for start in range(0, len(kept), limits.SERVED_PART):
            if start:
                limits.check_deadline(deadline, start, len(kept))
            parts.append(predict(self, context, kept[start : start + limits.SERVED_PART], params))
        return shaped(with_skipped_rows(pd.concat(parts, ignore_index=True), keep), output)

    return checked


def output_of(model_config: Mapping[str, Any]) -> str:
    """What ``predict`` returns, as the model was loaded (``OUTPUT``); another value is refused before any work."""
    output = model_config.get(OUTPUT, TABLE)
    if output not in (TABLE, LABEL):
        raise MlflowException.invalid_parameter_value(
            f'Expected the model_config "{OUTPUT}" to be "{TABLE}" (label and probabilities) or "{LABEL}" (the labels '
            f"alone, for mlflow.models.evaluate); got {output!r}."
        )
    return output


def shaped(predictions: pd.DataFrame, output: str) -> pd.DataFrame | pd.Series:
    """``predictions`` as ``output`` asks: the table, or its ``label`` column alone.

    MLflow's classifier evaluator (``mlflow.models.evaluate(..., model_type="classifier")``) takes a
    model's predictions as one column: it stacks them with the targets to find the labels, which
    fails for a table (``all the input arrays must have same number of dimensions``), and it
    ignores ``predictions=`` (MLflow 3.18). Loaded with ``model_config={"output": "label"}`` a
    model answers it; its probabilities stay out of that evaluation (MLflow takes them only from a
    scikit-learn or XGBoost flavor's ``predict_proba``).
    """
    return predictions["label"] if output == LABEL else predictions


def with_skipped_rows(predictions: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``predictions`` of the kept rows, spread over all rows; a skipped row gets label "" and empty probabilities.

    The probabilities of skipped rows are None (null in JSON, an empty cell in CSV, null in Parquet).
    """
    if keep.all():
        return predictions.reset_index(drop=True)
    frame = pd.DataFrame(index=range(len(keep)), columns=predictions.columns, dtype=object)
    frame.loc[keep] = predictions.to_numpy(dtype=object)
    frame.loc[~keep, "label"] = ""
    frame = frame.astype({"label": str})
    return frame.where(frame.notna(), None)


def predictions_frame(probabilities: np.ndarray, label_names: Sequence[str]) -> pd.DataFrame:
    """``label`` (the most probable name) plus one probability column per label.

    The probabilities are widened to the signature's double and renormalised there: rows of
    float32 probabilities sum to one only within float32 precision, and consumers that check
    (sklearn's Brier score in ``evaluate``) warn that they are not probabilities.
    """
    widened = probabilities.astype(np.float64)
    if len(widened):
        widened /= widened.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(widened, columns=[probability_column(n) for n in label_names])
    frame.insert(0, "label", np.asarray(label_names, dtype=object)[probabilities.argmax(axis=1)])
    return frame


def signature(label_names: Sequence[str]) -> ModelSignature:
    """Output: ``label`` and one double per label; param ``skip_empty``; no input schema.

    Without an input schema MLflow hands the model a request's table whole and a JSON list as an
    array, so ``texts_from_input`` finds the ``text`` column by name and refuses rows of several
    values. Each schema tried instead made MLflow drop texts or change them before the model saw
    them (docs/reliability.md, "What the public route costs"): one unnamed column (of type ``Any``
    or ``string``) kept the first value of each row of a list of lists and the first column of a
    table; a named ``text`` column refused a plain list of strings.
    """
    outputs = [ColSpec("string", "label")] + [ColSpec("double", probability_column(n)) for n in label_names]
    params = ParamSchema([ParamSpec(SKIP_EMPTY, "boolean", False)])
    return ModelSignature(inputs=None, outputs=Schema(outputs), params=params)


INPUT_EXAMPLE = pd.DataFrame({TEXT_COLUMN: ["i feel so happy today", "im scared of what comes next"]})
