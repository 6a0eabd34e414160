"""The GPU path: extraction, fine-tuning and the pyfunc model on CUDA, bf16 where the GPU runs it natively.

Skipped where there is no CUDA device (CI and the development machines are CPU-only).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from emotion_exp import features, models
from emotion_exp.stages import finetune
from tests.helpers import tiny_finetune_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine: the GPU path runs only where one is present"
)


def native_bf16_gpu() -> bool:
    """bf16 tensor cores: compute capability 8.0 (Ampere) or later."""
    return torch.cuda.get_device_capability()[0] >= 8


def test_auto_precision_is_bf16_exactly_where_the_gpu_runs_it_natively() -> None:
    assert models.resolve_precision("auto") == ("bf16" if native_bf16_gpu() else "fp32")


def test_extraction_runs_on_the_gpu(tiny_model_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoder = features.encoder_from(
        AutoTokenizer.from_pretrained(tiny_model_dir),
        AutoModel.from_pretrained(tiny_model_dir),
        models.resolve_precision("auto"),
    )
    extraction = features.extract(["i feel so happy today", "scared"] * 20, encoder, max_length=16, progress=False)

    assert encoder.device.type == "cuda" and next(encoder.model.parameters()).is_cuda
    assert extraction.features.shape == (40, 32) and np.isfinite(extraction.features).all()


def test_finetune_and_the_logged_model_run_on_the_gpu(small_dataset: Path, tiny_model_dir: Path, tmp_path) -> None:
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    run_id = finetune.run(tiny_finetune_config(small_dataset, tiny_model_dir, tmp_path, registered_model=name))

    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["resolved_precision"] == ("bf16" if native_bf16_gpu() else "fp32")
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    classifier = model.unwrap_python_model()
    assert next(classifier._model.parameters()).is_cuda
    predictions = model.predict(["i feel so happy today", "this waiting makes me anxious"])
    np.testing.assert_allclose(predictions.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-3)
