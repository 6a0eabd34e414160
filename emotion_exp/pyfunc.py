"""The text -> label models that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load.

Every model here takes a DataFrame with a ``text`` column or a list of strings and returns a
DataFrame with ``label`` and one probability column per label name (``prob_<label>``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from emotion_exp import texts as text_rule
from emotion_exp.contract import MODEL_NAME, probability_column

TEXT_COLUMN = "text"
SKIP_EMPTY = "skip_empty"
MAX_TEXTS = "max_texts"
DEFAULT_MAX_TEXTS = 10_000
MAX_CHARS = "max_chars"
RUNTIME = "runtime"
MODEL_CONFIG = {MAX_TEXTS: DEFAULT_MAX_TEXTS, MAX_CHARS: text_rule.DEFAULT_MAX_CHARS, RUNTIME: "auto"}
"""Logged with every model: texts one call may hold (a request to ``mlflow models serve``), characters per text,
and the runtime the encoder models run on (``auto``, ``torch``, ``onnx`` or ``onnx-int8``; see
``onnx_runtime.resolve_loaded``), chosen where the model loads.

MLflow lets a loader override only keys the logged config has (``load_model(uri, model_config=...)``,
``SERVING_MODEL_CONFIG`` or ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` as JSON for a served model).
"""
ONNX_SERVE_PACKAGES = ("mlflow-skinny", "pandas", "numpy", "onnxruntime", "tokenizers")
"""All a fine-tuned model's torch-free environment needs, the ``[onnx-serve]`` extra of pyproject.toml: MLflow's
skinny package serves a model (its scoring server, uvicorn) without the tracking server's dependencies,
less than half the disk of ``mlflow``'s."""
SERVED_PART = 512
"""Texts a served request predicts between two checks of its deadline."""
# Set by MLflow's scoring server (mlflow.environment_variables), read here without importing its internals.
_SERVING_ENVIRONMENT = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"
_REQUEST_TIMEOUT = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
_DEFAULT_REQUEST_TIMEOUT_S = 60


def texts_from_input(model_input: Any, skip_empty: bool = False, max_chars: int | None = None) -> list[str]:
    """Accept a DataFrame with a ``text`` column, a Series or a list of strings; refuse anything else.

    MLflow hands a list of strings over as a DataFrame with the single unnamed column ``0``;
    any other DataFrame must name its ``text`` column. Nulls, numbers and other non-text values
    are refused with their row numbers, and so are empty or whitespace-only texts unless
    ``skip_empty`` (the rule of ``emotion_exp.texts``, the same as for files); so are texts longer
    than ``max_chars`` characters, before any tokenizer sees them.
    """
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            values = model_input[TEXT_COLUMN]
        elif list(model_input.columns) == [0]:
            values = model_input.iloc[:, 0]
        else:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"Expected a DataFrame with a '{TEXT_COLUMN}' column; found columns {list(model_input.columns)}."
            )
    elif isinstance(model_input, (pd.Series, list, tuple, np.ndarray)):
        if isinstance(model_input, np.ndarray) and model_input.ndim > 1:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                _expected(f"an array of shape {model_input.shape}")
            )
        items = np.atleast_1d(model_input) if isinstance(model_input, np.ndarray) else model_input
        values = pd.Series(list(items), dtype=object)
    elif isinstance(model_input, str):
        values = pd.Series([model_input], dtype=object)
    else:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"Expected a DataFrame with a '{TEXT_COLUMN}' column or a list of strings; "
            f"got {type(model_input).__name__}."
        )
    values = list(values)
    found = text_rule.problems(values, max_chars=max_chars)
    if found.refused(skip_empty):
        hint = "" if skip_empty else f', or pass the param {{"{SKIP_EMPTY}": true}} to give empty texts an empty label'
        if found.too_long:
            hint += (
                f'; split or shorten texts over {max_chars:,} characters (the limit is the model_config "{MAX_CHARS}")'
            )
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"Expected every text to be a non-empty string; found {found.describe('row', skip_empty)} (rows count "
            f"from 0): send only strings{hint}."
        )
    return values


PAYLOAD_SHAPES = (
    '{"inputs": ["text", ...]}, {"dataframe_records": [{"text": "..."}, ...]}, '
    '{"dataframe_split": {"columns": ["text"], "data": [["..."], ...]}} or a Parquet table whose first column is text'
)
MESSAGE_CHARS = 2_000
"""The most characters of an error message the server sends back: never the whole request."""
_ECHOING_PREFIXES = ("Failed to predict data '", "Failed to enforce schema of data '")


def payload_problem(body: bytes | str, content_type: str | None) -> str | None:
    """Why a JSON request to the scoring server is no list of texts or table with a ``text`` column; None if it is.

    Checked on the raw payload, before MLflow parses it: MLflow turns a list of lists into a
    table and hands the model only its first column (``{"inputs": [["a", "b"], ["c", "d"]]}``
    would be two texts, not four), and a table without column names the same way. Only the
    shape is checked here; each text's value is checked by ``texts_from_input``. Bodies that
    are not JSON, or not an object, are left to MLflow's own messages.
    """
    if (content_type or "").split(";")[0].strip() != "application/json":
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    for key in ("inputs", "instances"):
        if key in payload:
            return _list_problem(key, payload[key])
    if isinstance(payload.get("dataframe_records"), list):
        return _records_problem("dataframe_records", payload["dataframe_records"])
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return _split_problem(split)
    return None


FIRST_COLUMN_HINT = f" (MLflow hands the model a table's first column only: put '{TEXT_COLUMN}' first)"


def _expected(found: str, hint: str = "") -> str:
    return (
        f"Expected a list of texts or a table with a '{TEXT_COLUMN}' column; found {found}{hint}: "
        f"send {PAYLOAD_SHAPES}."
    )


def _list_problem(key: str, value: Any) -> str | None:
    if isinstance(value, dict):
        return _expected(f'"{key}" as an object with the keys {list(value)[:5]}')
    if not isinstance(value, list):
        return None  # one value: a text, or a non-text the text check names
    nested = [row for row, item in enumerate(value) if isinstance(item, list)]
    if nested:
        return _expected(f'"{key}" as a list of lists (a list at {text_rule.where(nested, "row")})')
    records = [item for item in value if isinstance(item, dict)]
    if records and key == "instances":
        return _records_problem(key, value)
    if records:
        return _expected(f'"{key}" as a list of objects (send objects as "dataframe_records")')
    return None


def _records_problem(key: str, records: list[Any]) -> str | None:
    if not records:
        return None
    if not all(isinstance(record, dict) for record in records):
        return _expected(f'"{key}" mixing objects with other values')
    first_keys = list(records[0])
    if not first_keys or first_keys[0] != TEXT_COLUMN:
        found = f"records whose first key is {first_keys[0]!r}" if first_keys else "an empty first record"
        return _expected(found, FIRST_COLUMN_HINT)
    missing = [row for row, record in enumerate(records) if TEXT_COLUMN not in record]
    if missing:
        return _expected(f"records without a '{TEXT_COLUMN}' key ({text_rule.where(missing, 'row')})")
    return None


def _split_problem(split: dict[str, Any]) -> str | None:
    columns = split.get("columns")
    if columns is None:
        wide = [row for row, item in enumerate(split["data"]) if isinstance(item, list) and len(item) != 1]
        if wide:
            return _expected(
                f'"dataframe_split" rows of {len(split["data"][wide[0]])} values and no "columns" '
                f"({text_rule.where(wide, 'row')})"
            )
        return None
    if not isinstance(columns, list) or not columns or columns[0] != TEXT_COLUMN:
        return _expected(f'"dataframe_split" with the columns {columns!r}', FIRST_COLUMN_HINT)
    return None


def without_echo(message: str) -> str:
    """``message`` without MLflow's copy of the request (``Failed to predict data '<the whole input>'``), bounded.

    MLflow's scoring server puts the parsed request in front of the model's message; a 2 MB
    request got a 2 MB error. What is left is cut at ``MESSAGE_CHARS``.
    """
    if message.startswith(_ECHOING_PREFIXES) and "Error: " in message:
        message = message.rpartition("Error: ")[2]
    if len(message) > MESSAGE_CHARS:
        message = f"{message[:MESSAGE_CHARS]}... ({len(message) - MESSAGE_CHARS} more characters not shown)"
    return message


def guard_scoring_server() -> None:
    """Check every request to MLflow's scoring server for one of our text models by ``payload_problem`` first.

    Called from the models' ``load_context``; it acts only where MLflow's scoring server module
    is loaded (``mlflow models serve`` imports it before it loads the model, and its request
    handler looks ``invocations`` up at each request). Requests to other models pass untouched;
    the answers' messages never echo the request (``without_echo``).
    """
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    if server is None or getattr(server.invocations, "checks_text_payloads", False):
        return
    invocations = server.invocations

    @functools.wraps(invocations)
    def checked(data: Any, content_type: str, model: Any, input_schema: Any) -> Any:
        if not isinstance(python_model_of(model), TextModel):
            return invocations(data, content_type, model, input_schema)
        problem = payload_problem(data, content_type)
        if problem:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(problem)
        try:
            return invocations(data, content_type, model, input_schema)
        except mlflow.exceptions.MlflowException as error:
            error.message = without_echo(error.message)
            raise

    checked.checks_text_payloads = True
    server.invocations = checked


def text_input(predict: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    """Wrap a model's ``predict``: check the input and the params, cap the texts, and skip empty texts if asked.

    The wrapped ``predict`` gets the non-empty texts as a list of strings; rows skipped by
    ``skip_empty`` come back with an empty label and empty probabilities. The cap,
    ``max_texts`` (default ``DEFAULT_MAX_TEXTS``), and the characters per text, ``max_chars``
    (default ``texts.DEFAULT_MAX_CHARS``), come from the model's ``model_config``:
    ``mlflow.pyfunc.load_model(uri, model_config={"max_texts": N})``, or for ``mlflow models
    serve`` the environment variable ``SERVING_MODEL_CONFIG='{"max_texts": N}'``.
    """

    @functools.wraps(predict)
    def checked(self: Any, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        skip_empty = bool((params or {}).get(SKIP_EMPTY, False))
        model_config = getattr(context, "model_config", None) or {}
        max_chars = int(model_config.get(MAX_CHARS, text_rule.DEFAULT_MAX_CHARS))
        texts = texts_from_input(model_input, skip_empty=skip_empty, max_chars=max_chars)
        limit = int(model_config.get(MAX_TEXTS, DEFAULT_MAX_TEXTS))
        if len(texts) > limit:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"Expected at most {limit} texts in one call; got {len(texts)}: send them in parts of {limit} or fewer "
                f'(the limit is the model_config "{MAX_TEXTS}", see docs/serving.md, Limits).'
            )
        keep = np.fromiter((not text_rule.blank(text) for text in texts), dtype=bool, count=len(texts))
        kept = [text for text, kept in zip(texts, keep) if kept]
        deadline = _request_deadline()
        if deadline is None or len(kept) <= SERVED_PART:
            return with_skipped_rows(predict(self, context, kept, params), keep)
        parts = []
        for start in range(0, len(kept), SERVED_PART):
            if start and time.monotonic() > deadline:
                raise mlflow.exceptions.MlflowException(
                    f"Stopped after {start} of {len(kept)} texts: the request ran past the server's timeout "
                    "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT), and its client got a 504; send fewer texts per request.",
                    error_code=DEADLINE_EXCEEDED,
                )
            parts.append(predict(self, context, kept[start : start + SERVED_PART], params))
        return with_skipped_rows(pd.concat(parts, ignore_index=True), keep)

    return checked


def _request_deadline() -> float | None:
    """When a request to ``mlflow models serve`` times out (``time.monotonic``); None outside the server.

    The server answers 504 at its timeout but lets the request's thread run on; checking this
    between parts of a request stops work nobody waits for.
    """
    if os.environ.get(_SERVING_ENVIRONMENT, "").lower() != "true":
        return None
    return time.monotonic() + float(os.environ.get(_REQUEST_TIMEOUT, _DEFAULT_REQUEST_TIMEOUT_S))


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
    """Input: texts (a ``text`` column or a list); output: ``label`` and one double per label; param ``skip_empty``.

    The input column is unnamed because MLflow checks a named one before the model sees the
    data and refuses a plain list of strings. Its type is ``Any``: under ``string`` the server
    turns ``{"inputs": [null, 5]}`` into the texts "None" and "5" before the model sees them;
    ``texts_from_input`` enforces the ``text`` name and that every value is a string.
    """
    outputs = [ColSpec("string", "label")] + [ColSpec("double", probability_column(n)) for n in label_names]
    params = ParamSchema([ParamSpec(SKIP_EMPTY, "boolean", False)])
    return ModelSignature(inputs=Schema([ColSpec(AnyType())]), outputs=Schema(outputs), params=params)


INPUT_EXAMPLE = pd.DataFrame({TEXT_COLUMN: ["i feel so happy today", "im scared of what comes next"]})


@contextlib.contextmanager
def quietly_loading() -> Iterator[None]:
    """Keep transformers' "Loading weights" bar and load report off the console while a model loads.

    A served model's log and a user's ``mlflow.pyfunc.load_model`` (no emotion-exp CLI to quiet
    the libraries first) otherwise got a bar per load; ``EMOTION_EXP_VERBOSE=1`` keeps them.
    transformers' own settings are restored afterwards.
    """
    from transformers.utils import logging as transformers_logging

    from emotion_exp import console

    if console.verbose():
        yield
        return
    bar_enabled, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bar_enabled:
            transformers_logging.enable_progress_bar()


class TextModel(mlflow.pyfunc.PythonModel):
    """What every text -> label model here shares: requests to a scoring server that loads it are checked whole."""

    # The models check their input themselves (texts_from_input) behind the signature's Any input, on purpose.
    # MLflow would wrap predict for type-hint validation it cannot do without hints, and say so as each class is
    # defined: in every Spark worker and server process. Its own flag for classes that validate themselves.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        guard_scoring_server()


class _EncoderModel(TextModel):
    """What the encoder-backed models share: how long and how many texts a batch holds, the precision, the threads."""

    def __init__(self, max_length: int, batch_size: int, precision: str, threads: str) -> None:
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision
        self.threads = threads


class TransformerClassifier(_EncoderModel):
    """A fine-tuned transformers sequence classifier with its tokenizer: texts in, label and probabilities out.

    Its artifact ``classifier`` is the folder ``save_pretrained`` wrote, so loading needs no hub;
    the label names come from the model's ``id2label``. Texts are predicted in length-sorted
    batches, with probabilities computed in fp32 from the logits divided by ``temperature``
    (fitted on validation by the finetune stage; 1 = the raw softmax), on the intra-op thread
    count that ``threads`` asks for (``auto``: torch's own, see ``threads.use``).

    The model_config ``runtime`` picks the engine where the model loads (``runtime`` and
    ``runtime_reason`` say which and why): torch (bf16 where the hardware runs it natively,
    ``precision="auto"``) or ONNX Runtime fp32 (``onnx-int8``: its int8 quantisation). Models
    logged with the artifact ``onnx`` (``serving_artifacts``) carry their export and tokenizer.json,
    and where torch is not installed they serve from it with onnxruntime and tokenizers only
    (``ONNX_SERVE_PACKAGES``): this class imports torch and transformers only on the torch path.
    """

    ARTIFACT = "classifier"
    ONNX_ARTIFACT = "onnx"
    # Models logged before temperature scaling unpickle without the attribute: they keep the raw softmax.
    temperature: float = 1.0

    def __init__(
        self,
        max_length: int = 128,
        batch_size: int = 64,
        precision: str = "auto",
        threads: str = "auto",
        temperature: float = 1.0,
    ) -> None:
        super().__init__(max_length, batch_size, precision, threads)
        self.temperature = temperature

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        super().load_context(context)
        from emotion_exp import onnx_runtime

        serving = context.artifacts.get(self.ONNX_ARTIFACT)
        asked = str((context.model_config or {}).get(RUNTIME, "auto"))
        self.runtime, self.runtime_reason = onnx_runtime.resolve_loaded(asked, exported=serving is not None)
        self._session: onnx_runtime.Session | None = None
        if self.runtime != "torch" and serving is not None:
            self._serving = Path(serving)
            self._tokenizer = onnx_runtime.FastTokenizer(self._serving)
            self._label_names = self._tokenizer.label_names
            self.set_threads(getattr(self, "threads", "auto"))
            return
        self._load_torch(context.artifacts[self.ARTIFACT])
        if self.runtime != "torch":  # logged without its export: exported here, cached
            self._session = onnx_runtime.load(
                self._model, self._tokenizer, runtime=self.runtime, kind="logits", threads=self.threads_used
            )

    def _load_torch(self, folder: str) -> None:
        from emotion_exp.threads import prefer_passive_openmp

        prefer_passive_openmp()  # a server or Spark worker that has not loaded torch yet
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from emotion_exp import batching, models

        with quietly_loading():
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            loaded = AutoModelForSequenceClassification.from_pretrained(folder)
        self._model = loaded.eval().to(batching.best_device())
        config = self._model.config
        self._label_names = [config.id2label[i] for i in range(config.num_labels)]
        self._precision = models.resolve_precision(self.precision) if self.runtime == "torch" else "fp32"
        self.set_threads(getattr(self, "threads", "auto"))  # models logged before the option had none

    def set_threads(self, threads: str | int) -> None:
        """Use ``threads`` intra-op threads from now on; ``threads_used`` says how many.

        ONNX Runtime fixes its count per session: a served export's session is opened again (it
        loads in well under a second); torch's count is set in place.
        """
        from emotion_exp import onnx_runtime
        from emotion_exp import threads as thread_rule

        if self.runtime == "torch" or not hasattr(self, "_serving"):
            self.threads_used = thread_rule.use(threads)
            if self._session is not None:
                self._session = onnx_runtime.open_session(self._session.path, "logits", threads=self.threads_used)
            return
        self.threads_used = thread_rule.parse(threads) or thread_rule.available_cores()
        self._session = onnx_runtime.open_serving_folder(self._serving, self.runtime, self.threads_used)[0]

    @text_input
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        texts = model_input  # text_input hands over the checked, non-empty texts as a list
        if not texts:
            return predictions_frame(np.zeros((0, len(self._label_names))), self._label_names)
        options = {"max_length": self.max_length, "batch_size": self.batch_size, "temperature": self.temperature}
        if self._session is not None:
            from emotion_exp import onnx_runtime

            outputs = onnx_runtime.run(self._session, self._tokenizer, texts, **options)
        else:
            from emotion_exp import inference

            outputs = inference.run(
                self._model, self._tokenizer, texts, precision=self._precision, probabilities=True, **options
            )
        return predictions_frame(outputs.probabilities, self._label_names)

    @staticmethod
    def serving_artifacts(folder: Path) -> dict[str, str]:
        """The artifacts of a classifier saved in ``folder``: the folder, and its ONNX serving folder beside it.

        The serving folder, ``onnx`` beside ``folder`` (``onnx_runtime.write_serving_folder``), also holds
        ``requirements.txt``: the pinned ``[onnx-serve]`` packages a torch-free environment installs to serve it.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from emotion_exp import onnx_runtime

        with quietly_loading():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        onnx = TransformerClassifier.ONNX_ARTIFACT
        serving = onnx_runtime.write_serving_folder(model, tokenizer, folder.parent / onnx)
        (serving / "requirements.txt").write_text("\n".join(pinned(ONNX_SERVE_PACKAGES)) + "\n")
        return {TransformerClassifier.ARTIFACT: str(folder), onnx: str(serving)}


class ProbeClassifier(_EncoderModel):
    """The probe from raw text: the encoder's pooled features, then the fitted scikit-learn pipeline.

    Its one artifact (``encoder``) is the encoder and tokenizer folder ``save_pretrained``
    wrote, so loading needs no hub; the pipeline travels pickled inside the model. Features are
    made exactly as at training time (same pooling and max_length; length-sorted batches under
    ``torch.inference_mode``); ``precision="auto"`` resolves on the machine that loads the model,
    and so does the model_config ``runtime`` (``onnx_runtime.resolve_runtime``: an ONNX runtime
    exports the encoder with its pooling at load, cached).
    """

    ARTIFACT = "encoder"

    def __init__(
        self,
        pipeline: Any,
        label_names: Sequence[str],
        *,
        pooling: str,
        max_length: int,
        batch_size: int = 64,
        precision: str = "auto",
        threads: str = "auto",
    ) -> None:
        super().__init__(max_length, batch_size, precision, threads)
        self.pipeline = pipeline
        self.label_names = tuple(label_names)
        self.pooling = pooling

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        super().load_context(context)
        from emotion_exp.threads import prefer_passive_openmp

        prefer_passive_openmp()  # a server or Spark worker that has not loaded torch yet
        from transformers import AutoModel, AutoTokenizer

        from emotion_exp import features, models, onnx_runtime

        folder = context.artifacts[self.ARTIFACT]
        asked = str((context.model_config or {}).get(RUNTIME, "auto"))
        self.runtime, self.runtime_reason = onnx_runtime.resolve_runtime(asked)  # on the machine that loads it
        with quietly_loading():
            tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
        self._encoder = features.encoder_from(
            tokenizer,
            encoder,
            # ONNX runs fp32 whatever precision the model was logged with (bf16 was the logging machine's choice).
            models.resolve_precision(self.precision) if self.runtime == "torch" else "fp32",
            getattr(self, "threads", "auto"),  # models logged before the option had none
        )
        self._open_session()

    def _open_session(self) -> None:
        """For an ONNX runtime: the encoder's pooled export (cached) in a session on the encoder's thread count."""
        import dataclasses

        from emotion_exp import onnx_runtime

        if self.runtime == "torch":
            return
        session = onnx_runtime.load(
            self._encoder.model,
            self._encoder.tokenizer,
            runtime=self.runtime,
            kind="pooled",
            pooling=self.pooling,
            threads=self._encoder.threads,
        )
        self._encoder = dataclasses.replace(self._encoder, session=session)

    def set_threads(self, threads: str | int) -> None:
        """Use ``threads`` intra-op threads from now on; ``threads_used`` says how many."""
        import dataclasses

        from emotion_exp.threads import use

        self._encoder = dataclasses.replace(self._encoder, threads=use(threads))
        self._open_session()

    @property
    def threads_used(self) -> int:
        return self._encoder.threads

    @text_input
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import baselines, features

        texts = model_input  # text_input hands over the checked, non-empty texts as a list
        if not texts:
            return predictions_frame(np.zeros((0, len(self.label_names))), self.label_names)
        extraction = features.extract(
            texts,
            self._encoder,
            pooling=self.pooling,
            max_length=self.max_length,
            batch_size=self.batch_size,
            progress=False,
        )
        probabilities = baselines.predict_proba(self.pipeline, extraction.features, len(self.label_names))
        return predictions_frame(probabilities, self.label_names)


class TextPipelineClassifier(TextModel):
    """A scikit-learn pipeline that takes raw texts (the TF-IDF baseline), pickled inside the model."""

    def __init__(self, pipeline: Any, label_names: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.label_names = tuple(label_names)

    @text_input
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import baselines

        texts = model_input  # text_input hands over the checked, non-empty texts as a list
        if not texts:
            return predictions_frame(np.zeros((0, len(self.label_names))), self.label_names)
        probabilities = baselines.predict_proba(self.pipeline, texts, len(self.label_names))
        return predictions_frame(probabilities, self.label_names)


def python_model_of(model: mlflow.pyfunc.PyFuncModel) -> mlflow.pyfunc.PythonModel | None:
    """The ``PythonModel`` inside a loaded pyfunc model (to set its threads); None for another flavor."""
    try:
        return model.unwrap_python_model()
    except mlflow.exceptions.MlflowException:  # not a PythonModel: it predicts as it was logged
        return None


def runtime_config(runtime: str) -> dict[str, str] | None:
    """The ``model_config`` that asks a model for ``runtime`` where it loads (``--runtime`` of predict, evaluate).

    None for ``auto``, the logged default: MLflow warns of a key the logged config lacks (models
    logged before the runtime was in it), and they run as auto would.
    """
    return None if runtime == "auto" else {RUNTIME: runtime}


def runtime_tags(model: mlflow.pyfunc.PyFuncModel) -> dict[str, str]:
    """The ``runtime`` and ``runtime_reason`` tags of a loaded encoder model; none for another model (TF-IDF)."""
    python_model = python_model_of(model)
    if not hasattr(python_model, "runtime_reason"):
        return {}
    return {"runtime": python_model.runtime, "runtime_reason": python_model.runtime_reason}


def requirements(*packages: str) -> list[str]:
    """Pinned pip requirements of mlflow, pandas, numpy and ``packages`` as installed here.

    Given explicitly, MLflow skips inferring them, which loads the model once more in a subprocess.
    """

    return pinned(("mlflow", "pandas", "numpy", *packages))


def pinned(names: Sequence[str]) -> list[str]:
    """``name==version`` of each installed package in ``names``."""
    from importlib.metadata import version

    # Local version labels (torch's "+cpu") are not on the public index.
    return [f"{name}=={version(name).split('+')[0]}" for name in names]


def log_model(
    python_model: mlflow.pyfunc.PythonModel,
    label_names: Sequence[str],
    *,
    artifacts: dict[str, str] | None = None,
    packages: Sequence[str] = (),
) -> str:
    """Log ``python_model`` as the active run's ``model`` with signature and input example; return its URI.

    ``artifacts`` (name -> local path) are copied from disk, so no second copy of the weights
    is built in memory; ``packages`` are the pip packages the model needs beyond MLflow's own.
    The ``emotion_exp`` package travels with the model (``code_paths``), so it loads where
    emotion-exp is not installed, such as the fresh environment of ``mlflow models serve``.
    """
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=python_model,
        artifacts=artifacts,
        code_paths=[str(Path(__file__).resolve().parent)],
        signature=signature(label_names),
        input_example=INPUT_EXAMPLE,
        model_config=MODEL_CONFIG,
        pip_requirements=requirements(*packages),
    )
    return info.model_uri
