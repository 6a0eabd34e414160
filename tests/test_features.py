"""Feature extraction with the tiny encoder: shapes, pooling, batch independence, the extract stage and reuse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from emotion_exp import engine, features, models
from emotion_exp.cli import cli
from tests.helpers import artifacts

TEXTS = [
    "i feel so happy today",
    "i am scared of what comes next in my life and i cannot sleep at night because of it",
    "ok",
    "i feel a little bit lonely without my friends around this week",
    "my heart is full of love for my family",
]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> features.Encoder:
    return features.load_encoder(models.resolve(str(tiny_model_dir)), "fp32")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_features_are_float32_in_input_order_and_independent_of_the_batch(
    encoder: features.Encoder, pooling: str
) -> None:
    together = features.extract(TEXTS, encoder, pooling=pooling, batch_size=3, progress=False)
    assert together.features.shape == (len(TEXTS), 32)
    assert together.features.dtype == np.float32
    assert together.truncated == 0
    assert together.seconds > 0 and together.texts_per_second > 0
    for row, text in enumerate(TEXTS):
        alone = features.extract([text], encoder, pooling=pooling, progress=False).features[0]
        np.testing.assert_allclose(together.features[row], alone, atol=1e-4)


def test_mean_pooling_averages_the_real_tokens_and_cls_takes_the_first(encoder: features.Encoder) -> None:
    import torch

    text = TEXTS[3]
    batch = encoder.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder.model(**batch).last_hidden_state[0]
    mean = features.extract([text, TEXTS[1]], encoder, pooling="mean", progress=False).features[0]
    cls = features.extract([text, TEXTS[1]], encoder, pooling="cls", progress=False).features[0]
    np.testing.assert_allclose(mean, hidden.mean(dim=0).numpy(), atol=1e-5)
    np.testing.assert_allclose(cls, hidden[0].numpy(), atol=1e-5)


def test_over_long_texts_are_truncated_and_counted(encoder: features.Encoder) -> None:
    result = features.extract(TEXTS, encoder, max_length=8, progress=False)
    lengths = [len(ids) for ids in encoder.tokenizer(TEXTS)["input_ids"]]
    assert result.truncated == sum(n > 8 for n in lengths) == 3
    assert np.isfinite(result.features).all()


def test_no_texts_give_an_empty_matrix(encoder: features.Encoder) -> None:
    assert features.extract([], encoder, progress=False).features.shape == (0, 32)


def test_the_feature_key_uses_the_absolute_folder_the_weights_and_the_resolved_precision(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_model_dir.parent)
    resolved = models.resolve(tiny_model_dir.name)
    monkeypatch.setattr(models, "native_bf16", lambda: False)
    key = features.feature_key(resolved, "mean", 64, engine.resolve("torch", "auto", 1), "digest")
    assert key == {
        "model": str(tiny_model_dir.resolve()),
        "weights": "digest",
        "pooling": "mean",
        "max_length": "64",
        "precision": "fp32",
        "runtime": "torch",
    }
    packaged = engine.Engine("torch", "bf16", 1, "asked for")
    assert features.feature_key(models.resolve(models.DEFAULT_MODEL), "cls", 128, packaged, "d")["model"] == (
        models.DEFAULT_MODEL
    )


def test_the_model_digest_follows_the_weights_and_the_tokenizer_not_the_folder(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    original = models.resolve(str(tiny_model_dir))
    tokenizer, model = models.load_tokenizer(original), models.load_encoder(original)
    digest = features.model_digest(tokenizer, model)
    tokenizer(["a text to leave the tokenizer's truncation set"], truncation=True, max_length=4)
    assert features.model_digest(tokenizer, model) == digest  # its last call's settings do not count
    copied = models.resolve(str(copy))
    assert features.model_digest(models.load_tokenizer(copied), models.load_encoder(copied)) == digest
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert features.model_digest(tokenizer, model) != digest
    tokenizer.add_tokens(["emotionexp"])
    assert features.model_digest(tokenizer, models.load_encoder(original)) != digest


def _extract_args(small_dataset: Path, tiny_model_dir: Path, *extra: str) -> list[str]:
    return [
        "extract",
        "--dataset",
        str(small_dataset),
        "--model",
        str(tiny_model_dir),
        "--umap_max_points",
        "100",
        "--precision",
        "fp32",
        *extra,
    ]


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_extract_logs_features_plots_and_throughput_then_a_second_run_reuses_them(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str
) -> None:
    result = CliRunner().invoke(cli, _extract_args(small_dataset, tiny_model_dir))
    assert result.exit_code == 0, result.output
    [first] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    first_id = first.info.run_id
    assert first.info.status == "FINISHED"
    tags, metrics = first.data.tags, first.data.metrics
    assert tags["stage"] == "extract" and tags["features_run_id"] == first_id
    assert tags["features_pooling"] == "cls" and tags["features_precision"] == "fp32"
    assert tags["features_model"] == str(tiny_model_dir.resolve()) and tags["features_max_length"] == "128"
    assert metrics["texts_per_second"] > 0 and metrics["truncated_texts"] == 0
    assert {"extract_seconds_train", "extract_seconds_val", "extract_seconds_test"} <= set(metrics)
    assert first.data.params["resolved_precision"] == "fp32"
    assert 1 <= int(tags["threads_used"]) <= len(os.sched_getaffinity(0))
    assert artifacts(first_id) == {
        "features/features.npz",
        "plots/label_distribution.png",
        "plots/umap_overlay.png",
        "plots/umap_per_label.png",
    }
    saved = features.load(
        Path(mlflow.artifacts.download_artifacts(run_id=first_id, artifact_path="features/features.npz"))
    )
    assert {n: a.shape for n, a in saved.features.items()} == {
        "train": (120, 32),
        "validation": (40, 32),
        "test": (40, 32),
    }
    assert all(a.dtype == np.float32 for a in saved.features.values())
    assert saved.label_names == ("sadness", "joy", "love", "anger", "fear", "surprise")

    result = CliRunner().invoke(cli, _extract_args(small_dataset, tiny_model_dir))
    assert result.exit_code == 0, result.output
    second = next(
        r
        for r in mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
        if r.info.run_id != first_id
    )
    assert second.info.status == "FINISHED"
    assert second.data.tags["features_run_id"] == first_id
    assert second.data.tags["reused_features"] == "true"
    assert "texts_per_second" not in second.data.metrics
    assert artifacts(second.info.run_id) == set()


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_different_pooling_is_not_reused(small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str) -> None:
    from emotion_exp.config import ExtractConfig
    from emotion_exp.stages import extract

    common = {"dataset": str(small_dataset), "model": str(tiny_model_dir), "precision": "fp32", "umap_max_points": 100}
    cls_run = extract.run(ExtractConfig(**common))
    mean_run = extract.run(ExtractConfig(**common, pooling="mean"))
    assert mean_run != cls_run
    assert extract.run(ExtractConfig(**common, pooling="mean")) == mean_run


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_new_weights_at_the_same_path_are_extracted_anew(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, isolated_mlflow: str
) -> None:
    import torch
    from transformers import AutoModel

    from emotion_exp.config import ExtractConfig
    from emotion_exp.stages import extract

    folder = shutil.copytree(tiny_model_dir, tmp_path / "encoder")
    config = ExtractConfig(dataset=str(small_dataset), model=str(folder), precision="fp32", umap_max_points=100)
    first = extract.run(config)
    assert extract.run(config) == first  # the same weights: reused
    retrained = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    retrained.save_pretrained(folder)  # replaced in place, as a retrained model saved to the same folder

    second = extract.run(config)

    assert second != first
    runs = {r.info.run_id: r for r in mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")}
    assert runs[second].data.tags["features_run_id"] == second and "reused_features" not in runs[second].data.tags
    assert runs[second].data.tags["features_weights"] != runs[first].data.tags["features_weights"]
