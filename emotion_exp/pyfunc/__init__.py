"""The text -> label models that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load, by job.

- ``inputs``: the input contract (what a call takes and refuses, the signature, skipped rows);
- ``limits``: what one call may hold and when a served request stops;
- ``classifiers``: the model classes (fine-tuned transformer, probe, TF-IDF);
- ``logged``: how a model is logged (its ``model_config``, requirements and code).

Every model takes a DataFrame with a ``text`` column or a list of strings and returns a
DataFrame with ``label`` and one probability column per label name (``prob_<label>``); loaded
with ``model_config={"output": "label"}``, the labels alone (what MLflow's classifier evaluator takes).
"""

from emotion_exp.pyfunc.classifiers import (
    ProbeClassifier,
    TextModel,
    TextPipelineClassifier,
    TransformerClassifier,
    engine_tags,
    python_model_of,
)
from emotion_exp.pyfunc.inputs import (
    INPUT_EXAMPLE,
    LABEL,
    OUTPUT,
    SKIP_EMPTY,
    TABLE,
    predictions_frame,
    signature,
    text_input,
    texts_from_input,
    with_skipped_rows,
)
from emotion_exp.pyfunc.limits import DEFAULT_MAX_TEXTS, MAX_CHARS, MAX_TEXTS, SERVED_PART
from emotion_exp.pyfunc.logged import MODEL_CONFIG, ONNX_SERVE_PACKAGES, PRECISION, RUNTIME, log_model

__all__ = [
    "DEFAULT_MAX_TEXTS",
    "INPUT_EXAMPLE",
    "LABEL",
    "MAX_CHARS",
    "MAX_TEXTS",
    "MODEL_CONFIG",
    "ONNX_SERVE_PACKAGES",
    "OUTPUT",
    "PRECISION",
    "RUNTIME",
    "SERVED_PART",
    "SKIP_EMPTY",
    "TABLE",
    "ProbeClassifier",
    "TextModel",
    "TextPipelineClassifier",
    "TransformerClassifier",
    "engine_tags",
    "log_model",
    "predictions_frame",
    "python_model_of",
    "signature",
    "text_input",
    "texts_from_input",
    "with_skipped_rows",
]
