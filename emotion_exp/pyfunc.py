"""The text -> label models that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load.

Every model here takes a DataFrame with a ``text`` column or a list of strings and returns a
DataFrame with ``label`` and one probability column per label name (``prob_<label>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

TEXT_COLUMN = "text"


def probability_column(label: str) -> str:
    """Name of the output column holding a label's probability."""
    return f"prob_{label}"


def texts_from_input(model_input: Any) -> list[str]:
    """Accept a DataFrame with a ``text`` column, a Series or a list of strings.

    MLflow hands a list of strings over as a DataFrame with the single unnamed column ``0``
    (the signature's input is an unnamed string column so that lists pass its check); any
    other DataFrame must name its ``text`` column.
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
        values = pd.Series(list(np.asarray(model_input, dtype=object).ravel()))
    elif isinstance(model_input, str):
        values = pd.Series([model_input])
    else:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"Expected a DataFrame with a '{TEXT_COLUMN}' column or a list of strings; "
            f"got {type(model_input).__name__}."
        )
    bad = [i for i, value in enumerate(values) if not isinstance(value, str)]
    if bad:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"Expected every text to be a string; rows {bad[:5]} are not."
        )
    return list(values)


def predictions_frame(probabilities: np.ndarray, label_names: Sequence[str]) -> pd.DataFrame:
    """``label`` (the most probable name) plus one probability column per label."""
    frame = pd.DataFrame(probabilities.astype(np.float64), columns=[probability_column(n) for n in label_names])
    frame.insert(0, "label", np.asarray(label_names, dtype=object)[probabilities.argmax(axis=1)])
    return frame


def signature(label_names: Sequence[str]) -> ModelSignature:
    """Input: strings (a ``text`` column or a plain list); output: ``label`` and one double per label.

    The input column is unnamed because MLflow checks a named one before the model sees the
    data and refuses a plain list of strings; ``texts_from_input`` enforces the ``text`` name.
    """
    outputs = [ColSpec("string", "label")] + [ColSpec("double", probability_column(n)) for n in label_names]
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema(outputs))


INPUT_EXAMPLE = pd.DataFrame({TEXT_COLUMN: ["i feel so happy today", "im scared of what comes next"]})


MODEL_NAME = "model"


class TransformerClassifier(mlflow.pyfunc.PythonModel):
    """A fine-tuned transformers sequence classifier with its tokenizer: texts in, label and probabilities out.

    Its one artifact (``classifier``) is the folder ``save_pretrained`` wrote, so loading needs
    no hub; the label names come from the model's ``id2label``. Texts are predicted in
    length-sorted batches under ``torch.inference_mode``, in bf16 where the hardware runs it
    natively (``precision="auto"``), with probabilities computed in fp32, on the intra-op thread
    count that ``threads`` asks for (``auto``: measured, and measured again now and then).
    """

    ARTIFACT = "classifier"

    def __init__(
        self, max_length: int = 128, batch_size: int = 64, precision: str = "auto", threads: str = "auto"
    ) -> None:
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision
        self.threads = threads

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from emotion_exp import batching, models

        folder = context.artifacts[self.ARTIFACT]
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModelForSequenceClassification.from_pretrained(folder).eval().to(batching.best_device())
        config = self._model.config
        self._label_names = [config.id2label[i] for i in range(config.num_labels)]
        self._precision = models.resolve_precision(self.precision)
        self.set_threads(getattr(self, "threads", "auto"))  # models logged before the option had none

    def set_threads(self, threads: str | int) -> None:
        """Use ``threads`` intra-op threads from now on (``auto``: measured); ``chosen_threads`` says which."""
        from emotion_exp.threads import ThreadTuner

        self._tuner = ThreadTuner(threads)

    @property
    def chosen_threads(self) -> list[int]:
        return list(self._tuner.chosen)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import inference

        outputs = inference.run(
            self._model,
            self._tokenizer,
            texts_from_input(model_input),
            max_length=self.max_length,
            batch_size=self.batch_size,
            precision=self._precision,
            probabilities=True,
            tuner=self._tuner,
        )
        return predictions_frame(outputs.probabilities, self._label_names)


class ProbeClassifier(mlflow.pyfunc.PythonModel):
    """The probe from raw text: the encoder's pooled features, then the fitted scikit-learn pipeline.

    Its one artifact (``encoder``) is the encoder and tokenizer folder ``save_pretrained``
    wrote, so loading needs no hub; the pipeline travels pickled inside the model. Features are
    made exactly as at training time (same pooling and max_length; length-sorted batches under
    ``torch.inference_mode``); ``precision="auto"`` resolves on the machine that loads the model.
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
        self.pipeline = pipeline
        self.label_names = tuple(label_names)
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision
        self.threads = threads

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from transformers import AutoModel, AutoTokenizer

        from emotion_exp import features

        folder = context.artifacts[self.ARTIFACT]
        self._encoder = features.encoder_from(
            AutoTokenizer.from_pretrained(folder),
            AutoModel.from_pretrained(folder),
            self.precision,
            getattr(self, "threads", "auto"),  # models logged before the option had none
        )

    def set_threads(self, threads: str | int) -> None:
        """Use ``threads`` intra-op threads from now on (``auto``: measured); ``chosen_threads`` says which."""
        import dataclasses

        from emotion_exp.threads import ThreadTuner

        self._encoder = dataclasses.replace(self._encoder, tuner=ThreadTuner(threads))

    @property
    def chosen_threads(self) -> list[int]:
        return list(self._encoder.tuner.chosen)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import baselines, features

        texts = texts_from_input(model_input)
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


class TextPipelineClassifier(mlflow.pyfunc.PythonModel):
    """A scikit-learn pipeline that takes raw texts (the TF-IDF baseline), pickled inside the model."""

    def __init__(self, pipeline: Any, label_names: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.label_names = tuple(label_names)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import baselines

        texts = texts_from_input(model_input)
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


def requirements(*packages: str) -> list[str]:
    """Pinned pip requirements of mlflow, pandas, numpy and ``packages`` as installed here.

    Given explicitly, MLflow skips inferring them, which loads the model once more in a subprocess.
    """
    from importlib.metadata import version

    names = ("mlflow", "pandas", "numpy", *packages)
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
        pip_requirements=requirements(*packages),
    )
    return info.model_uri
