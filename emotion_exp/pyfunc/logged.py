"""How a model is logged: its signature and example, its ``model_config``, its pinned requirements and code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow

from emotion_exp.contract import MODEL_NAME
from emotion_exp.engine import PRECISION, RUNTIME
from emotion_exp.pyfunc import limits
from emotion_exp.pyfunc.inputs import INPUT_EXAMPLE, OUTPUT, TABLE, signature

MODEL_CONFIG = {**limits.LIMITS, RUNTIME: "auto", PRECISION: "auto", OUTPUT: TABLE}
"""Logged with every model: texts one call may hold (a request to ``mlflow models serve``), characters per text,
the runtime and precision the encoder models run on (``engine.for_loaded_model``), decided where the model
loads, and what ``predict`` returns (``inputs.OUTPUT``: the table, or the labels alone for MLflow's evaluator).
``log_model`` logs the precision the model was asked for (``auto``, ``fp32`` or ``bf16``), not ``auto``.

MLflow lets a loader override only keys the logged config has (``load_model(uri, model_config=...)``,
``SERVING_MODEL_CONFIG`` or ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` as JSON for a served model).
"""
ONNX_SERVE_PACKAGES = ("mlflow-skinny", "pandas", "numpy", "onnxruntime", "tokenizers")
"""All a fine-tuned model's torch-free environment needs, the ``[onnx-serve]`` extra of pyproject.toml: MLflow's
skinny package serves a model (its scoring server, uvicorn) without the tracking server's dependencies,
less than half the disk of ``mlflow``'s."""
PACKAGE_FOLDER = Path(__file__).resolve().parents[1]
"""The ``emotion_exp`` package, which travels with every model (``code_paths``)."""


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
    name: str = MODEL_NAME,
    artifacts: dict[str, str] | None = None,
    packages: Sequence[str] = (),
) -> str:
    """Log ``python_model`` as the active run's model ``name`` with signature and input example; return its URI.

    A stage names it after itself, so MLflow's Models tab lists ``finetune``, ``probe``, ``tfidf``
    and ``runs:/<run id>/<stage>`` finds it.

    ``artifacts`` (name -> local path) are copied from disk, so no second copy of the weights
    is built in memory; ``packages`` are the pip packages the model needs beyond MLflow's own.
    The ``emotion_exp`` package travels with the model (``code_paths``), so it loads where
    emotion-exp is not installed, such as the fresh environment of ``mlflow models serve``.
    """
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=python_model,
        artifacts=artifacts,
        code_paths=[str(PACKAGE_FOLDER)],
        signature=signature(label_names),
        input_example=INPUT_EXAMPLE,
        model_config={**MODEL_CONFIG, PRECISION: getattr(python_model, "precision", "auto")},
        pip_requirements=requirements(*packages),
    )
    return info.model_uri
