"""The model classes: a fine-tuned transformer, the probe (encoder features + a scikit-learn head), TF-IDF.

Each takes what the input contract (``inputs``) lets through and returns ``inputs.predictions_frame``.
The encoder models choose their engine where they load (``load_context``); torch and transformers
are imported only on the paths that need them, so a fine-tuned model serves from its ONNX export
where torch is not installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from emotion_exp.pyfunc.inputs import predictions_frame, text_input
from emotion_exp.pyfunc.logged import ONNX_SERVE_PACKAGES, pinned


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
    """What every text -> label model here shares: the input contract (``inputs.text_input`` on ``predict``)."""


class _EncoderModel(TextModel):
    """What the encoder-backed models share: how long and how many texts a batch holds, the precision asked for
    (``auto``, ``fp32`` or ``bf16``, kept as asked), the threads, and the engine they resolve to where they load."""

    def __init__(self, max_length: int, batch_size: int, precision: str, threads: str) -> None:
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision
        self.threads = threads

    def _resolve_engine(self, context: mlflow.pyfunc.PythonModelContext, *, exported: bool) -> None:
        """Decide the engine once, as the model loads (``engine.for_loaded_model``), before torch is imported."""
        from emotion_exp import engine
        from emotion_exp.threads import prefer_passive_openmp

        prefer_passive_openmp()  # a server or Spark worker that has not loaded torch yet
        # Models logged before the threads option had none.
        threads = getattr(self, "threads", "auto")
        self.engine = engine.for_loaded_model(context.model_config or {}, self.precision, threads, exported=exported)

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def runtime_reason(self) -> str:
        return self.engine.reason

    @property
    def threads_used(self) -> int:
        return self.engine.threads


class TransformerClassifier(_EncoderModel):
    """A fine-tuned transformers sequence classifier with its tokenizer: texts in, label and probabilities out.

    Its artifact ``classifier`` is the folder ``save_pretrained`` wrote, so loading needs no hub;
    the label names come from the model's ``id2label``. Texts are predicted in length-sorted
    batches, with probabilities computed in fp32 from the logits divided by ``temperature``
    (fitted on validation by the finetune stage; 1 = the raw softmax).

    The engine is decided where the model loads (``engine.for_loaded_model``, by the model_config
    keys ``runtime`` and ``precision``; ``engine`` says which and why): torch (fp32 or bf16) or ONNX
    Runtime fp32 (``onnx-int8``: its int8 quantisation). Models logged with the artifact ``onnx``
    (``serving_artifacts``) carry their export and tokenizer.json, and where torch is not installed
    they serve from it with onnxruntime and tokenizers only (``ONNX_SERVE_PACKAGES``): this class
    imports torch and transformers only on the torch path.
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
        from emotion_exp import onnx_runtime

        serving = context.artifacts.get(self.ONNX_ARTIFACT)
        self._resolve_engine(context, exported=serving is not None)
        self._session: onnx_runtime.Session | None = None
        if self.engine.from_export:
            self._serving = Path(serving)
            self._tokenizer = onnx_runtime.FastTokenizer(self._serving)
            self._label_names = self._tokenizer.label_names
            self._session = onnx_runtime.open_serving_folder(self._serving, self.runtime, self.threads_used)[0]
            return
        self._load_torch(context.artifacts[self.ARTIFACT])
        if self.runtime != "torch":  # logged without its export: exported here, cached
            self._session = onnx_runtime.load(
                self._model, self._tokenizer, runtime=self.runtime, kind="logits", threads=self.threads_used
            )

    def _load_torch(self, folder: str) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from emotion_exp import batching

        with quietly_loading():
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            loaded = AutoModelForSequenceClassification.from_pretrained(folder)
        self._model = loaded.eval().to(batching.best_device())
        config = self._model.config
        self._label_names = [config.id2label[i] for i in range(config.num_labels)]

    def set_threads(self, threads: str | int) -> None:
        """Use ``threads`` intra-op threads from now on; ``threads_used`` says how many.

        ONNX Runtime fixes its count per session: the session is opened again (it loads in well
        under a second); torch's count is set in place.
        """
        from emotion_exp import engine, onnx_runtime

        self.engine = engine.with_threads(self.engine, threads)
        if hasattr(self, "_serving"):
            self._session = onnx_runtime.open_serving_folder(self._serving, self.runtime, self.threads_used)[0]
        elif self._session is not None:
            self._session = onnx_runtime.open_session(self._session.path, "logits", threads=self.threads_used)

    @text_input
    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        texts = model_input  # the checked, non-empty texts (text_input)
        if not texts:
            return predictions_frame(np.zeros((0, len(self._label_names))), self._label_names)
        options = {"max_length": self.max_length, "batch_size": self.batch_size, "temperature": self.temperature}
        if self._session is not None:
            from emotion_exp import onnx_runtime

            outputs = onnx_runtime.run(self._session, self._tokenizer, texts, **options)
        else:
            from emotion_exp import inference

            outputs = inference.run(
                self._model, self._tokenizer, texts, precision=self.engine.precision, probabilities=True, **options
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
    ``torch.inference_mode``), on the engine decided where the model loads (``engine.for_loaded_model``:
    an ONNX runtime exports the encoder with its pooling at load, cached).
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
        self._resolve_engine(context, exported=False)
        from transformers import AutoModel, AutoTokenizer

        folder = context.artifacts[self.ARTIFACT]
        with quietly_loading():
            tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
        self._on_engine(tokenizer, encoder)

    def _on_engine(self, tokenizer: Any, encoder: Any) -> None:
        from emotion_exp import features

        loaded = features.encoder_from(tokenizer, encoder, self.engine.precision, self.threads_used)
        self._encoder = features.on_runtime(loaded, self.runtime, self.pooling)

    def set_threads(self, threads: str | int) -> None:
        """Use ``threads`` intra-op threads from now on; ``threads_used`` says how many."""
        from emotion_exp import engine

        self.engine = engine.with_threads(self.engine, threads)
        self._on_engine(self._encoder.tokenizer, self._encoder.model)

    @text_input
    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import baselines, features

        texts = model_input  # the checked, non-empty texts (text_input)
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
    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        from emotion_exp import baselines

        texts = model_input  # the checked, non-empty texts (text_input)
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


def engine_tags(model: mlflow.pyfunc.PyFuncModel) -> dict[str, str]:
    """The tags of a loaded encoder model's engine (``engine.Engine.tags``); none for another model (TF-IDF)."""
    python_model = python_model_of(model)
    return python_model.engine.tags() if isinstance(python_model, _EncoderModel) else {}
