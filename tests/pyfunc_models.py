"""A small real pyfunc model for registry and prediction tests: it logs in about a second."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from emotion_exp.pyfunc import (
    INPUT_EXAMPLE,
    MODEL_CONFIG,
    TextModel,
    predictions_frame,
    signature,
    text_input,
    texts_from_input,
)
from tests.helpers import LABELS


class KeywordModel(TextModel):
    """joy for texts with 'happy', fear for 'anxious' or 'scared', sadness otherwise."""

    @text_input
    def predict(self, context, model_input, params=None):
        texts = texts_from_input(model_input)
        probabilities = np.full((len(texts), len(LABELS)), 0.05)
        for row, text in enumerate(texts):
            label = 1 if "happy" in text else 4 if ("anxious" in text or "scared" in text) else 0
            probabilities[row, label] = 0.75
        return predictions_frame(probabilities, LABELS)


class FailingModel(KeywordModel):
    """KeywordModel that fails on a text containing 'boom': a job that breaks half-way."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        if any("boom" in text for text in texts_from_input(model_input)):
            raise RuntimeError("boom")
        return super().predict(context, model_input, params)


def log_keyword_model(*, input_example: bool = True, failing: bool = False) -> str:
    """Log ``KeywordModel`` as ``model`` in the active run with the project's signature; return its URI.

    Without the input example (which MLflow runs through the model) logging takes half the time.
    """
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=FailingModel() if failing else KeywordModel(),
        signature=signature(LABELS),
        input_example=INPUT_EXAMPLE if input_example else None,
        model_config=MODEL_CONFIG,
        pip_requirements=["mlflow"],
    )
    return info.model_uri
