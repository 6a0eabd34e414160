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
from emotion_exp.pyfunc.logged import ONNX_SERVE_PACKAGES, RUNTIME, pinned


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


def runtime_tags(model: mlflow.pyfunc.PyFuncModel) -> dict[str, str]:
    """The ``runtime`` and ``runtime_reason`` tags of a loaded encoder model; none for another model (TF-IDF)."""
    python_model = python_model_of(model)
    if not hasattr(python_model, "runtime_reason"):
        return {}
    return {"runtime": python_model.runtime, "runtime_reason": python_model.runtime_reason}
