"""ONNX Runtime against torch fp32 on the same texts: labels, probabilities, features, the cache, the CLI."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from emotion_exp import baselines, engine, features, inference, models, onnx_runtime
from emotion_exp.cli import cli
from emotion_exp.errors import UserError
from tests.helpers import sample_texts


@pytest.fixture(scope="module")
def classifier(tiny_model_dir: Path) -> tuple[object, object]:
    """The tiny encoder with a seeded six-label head, and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=6).eval()
    return model, models.load_tokenizer(models.resolve(str(tiny_model_dir)))


def test_onnx_logits_give_torch_fp32_labels_and_probabilities(
    classifier: tuple[object, object], tmp_path: Path
) -> None:
    model, tokenizer = classifier
    texts = sample_texts(2000)
    options = {"max_length": 128, "batch_size": 32}
    torch_out = inference.run(model, tokenizer, texts, precision="fp32", logits=True, probabilities=True, **options)
    session = onnx_runtime.load(model, tokenizer, runtime="onnx", kind="logits", folder=tmp_path)
    onnx_out = onnx_runtime.run(session, tokenizer, texts, **options)
    agreement = float(np.mean(onnx_out.logits.argmax(1) == torch_out.logits.argmax(1)))
    assert agreement >= 0.999, agreement
    assert np.abs(onnx_out.probabilities - torch_out.probabilities).max() <= 1e-4


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_onnx_pooled_features_equal_torch_fp32(tiny_model_dir: Path, tmp_path: Path, pooling: str) -> None:
    resolved = models.resolve(str(tiny_model_dir))
    torch_encoder = features.load_encoder(resolved, "fp32", 1)
    session = onnx_runtime.load(
        torch_encoder.model, torch_encoder.tokenizer, runtime="onnx", kind="pooled", pooling=pooling, folder=tmp_path
    )
    texts = sample_texts(500)
    ours = features.extract(texts, torch_encoder, pooling=pooling, progress=False).features
    theirs = onnx_runtime.run(session, torch_encoder.tokenizer, texts, max_length=128, batch_size=32).pooled
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_extraction_reports_its_progress_on_every_runtime(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, runtime: str
) -> None:
    """A user whose CPU runs ONNX (no native bf16) sees the extraction's progress as a torch user does."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    encoder = features.load_encoder(models.resolve(str(tiny_model_dir)), "fp32", 1, runtime=runtime)
    features.extract(sample_texts(64), encoder, batch_size=8, description="extract train")
    lines = capsys.readouterr().err.splitlines()  # not a terminal here: one line every few per cent
    assert lines and lines[-1].startswith("extract train: 100% (64/64 texts, "), lines


def test_a_probe_trained_on_torch_features_scores_the_same_on_onnx_features(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    resolved = models.resolve(str(tiny_model_dir))
    torch_encoder = features.load_encoder(resolved, "fp32", 1)
    onnx_encoder = features.load_encoder(resolved, "fp32", 1, runtime="onnx")
    assert onnx_encoder.runtime == "onnx" and onnx_runtime.cache_dir().is_relative_to(tmp_path)
    train = pd.read_csv(small_dataset / "train.csv")
    test = pd.read_csv(small_dataset / "test.csv")
    probe = baselines.fit_probe(
        features.extract(train["text"].tolist(), torch_encoder, progress=False).features,
        train["label"].astype("category").cat.codes.to_numpy(),
    )
    codes = dict(enumerate(train["label"].astype("category").cat.categories))
    truth = test["label"].to_numpy()

    def accuracy(encoder: features.Encoder) -> float:
        predicted = probe.predict(features.extract(test["text"].tolist(), encoder, progress=False).features)
        return float(np.mean(np.array([codes[p] for p in predicted]) == truth))

    assert abs(accuracy(onnx_encoder) - accuracy(torch_encoder)) <= 0.001


def test_the_export_is_cached_by_weights_and_int8_runs(
    classifier: tuple[object, object], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    model, tokenizer = classifier
    first = onnx_runtime.export(model, tokenizer, kind="logits", folder=tmp_path)
    written = first.stat().st_ino
    assert onnx_runtime.export(model, tokenizer, kind="logits", folder=tmp_path) == first
    assert first.stat().st_ino == written, "a cache hit exported again"
    assert onnx_runtime.export(model, tokenizer, kind="pooled", folder=tmp_path) != first

    int8 = onnx_runtime.load(model, tokenizer, runtime="onnx-int8", kind="logits", folder=tmp_path)
    assert int8.path.stem.endswith("-int8") and int8.path.stat().st_size < first.stat().st_size
    texts = sample_texts(1000)
    fp32 = onnx_runtime.run(onnx_runtime.open_session(first, "logits"), tokenizer, texts, max_length=128, batch_size=32)
    quantized = onnx_runtime.run(int8, tokenizer, texts, max_length=128, batch_size=32)
    agreement = float(np.mean(quantized.logits.argmax(1) == fp32.logits.argmax(1)))
    print(f"int8 labels agree with fp32 on {agreement:.1%} of {len(texts)} texts (tiny random model)")
    assert agreement >= 0.5

    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert onnx_runtime.export(model, tokenizer, kind="logits", folder=tmp_path) != first
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".onnx"] * 4, "a temporary file was left behind"


def test_the_cache_keeps_its_size_limit_removing_the_least_recently_used_first(
    classifier: tuple[object, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    model, tokenizer = classifier
    logits = onnx_runtime.export(model, tokenizer, kind="logits", folder=tmp_path)
    cls = onnx_runtime.export(model, tokenizer, kind="pooled", pooling="cls", folder=tmp_path)
    size_mb = max(logits.stat().st_size, cls.stat().st_size) / 2**20
    monkeypatch.setenv(onnx_runtime.CACHE_LIMIT, f"{2.5 * size_mb}")  # room for two exports, not three
    hour_ago = time.time() - 3600
    os.utime(logits, (hour_ago - 60, hour_ago - 60))
    os.utime(cls, (hour_ago, hour_ago))  # used after logits
    left = tmp_path / ".export-left-by-a-killed-process.onnx"
    left.write_bytes(b"partial")
    os.utime(left, (hour_ago - 60, hour_ago - 60))

    assert onnx_runtime.export(model, tokenizer, kind="logits", folder=tmp_path) == logits  # used again: newest
    mean = onnx_runtime.export(model, tokenizer, kind="pooled", pooling="mean", folder=tmp_path)

    assert sorted(tmp_path.iterdir()) == sorted([logits, mean]), "the least recently used export (cls) stays"
    monkeypatch.setenv(onnx_runtime.CACHE_LIMIT, "0")  # the export just made always stays
    assert onnx_runtime.export(model, tokenizer, kind="pooled", pooling="cls", folder=tmp_path) == cls
    assert list(tmp_path.iterdir()) == [cls]
    monkeypatch.setenv(onnx_runtime.CACHE_LIMIT, "lots")
    with pytest.raises(UserError, match="EMOTION_EXP_ONNX_CACHE_MB must be a number of MB, 0 or more; got 'lots'"):
        onnx_runtime.export(model, tokenizer, kind="logits", folder=tmp_path)


def test_onnx_without_onnxruntime_is_one_clear_error_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    with pytest.raises(UserError, match=r"pip install onnxruntime onnx"):
        engine.resolve("onnx")
    monkeypatch.setattr(models, "native_bf16", lambda: False)
    chosen = engine.resolve("auto")
    assert chosen.runtime == "torch" and "onnxruntime not installed" in chosen.reason


def test_a_runtime_decided_without_onnx_does_not_import_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def imported() -> bool:
        raise AssertionError("onnx and onnxruntime were imported (0.8 s) for a runtime that does not need them")

    monkeypatch.setattr(onnx_runtime, "available", imported)
    monkeypatch.setattr(models, "native_bf16", lambda: True)

    assert (engine.resolve("torch").runtime, engine.resolve("torch").reason) == ("torch", "asked for")
    assert engine.resolve("auto").runtime == "torch"
    assert engine.for_loaded_model({}, "auto", "auto", exported=False).runtime == "torch"  # no export logged


def test_onnx_with_bf16_asked_for_is_one_clear_error(small_dataset: Path, tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["extract", "--dataset", str(small_dataset), "--model", str(tiny_model_dir)]
        + ["--runtime", "onnx", "--precision", "bf16"],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--runtime onnx runs fp32, but --precision bf16 was asked for" in result.output
    for command in (["predict", "--input", str(small_dataset / "test.csv")], ["evaluate"]):
        result = CliRunner().invoke(cli, [*command, "--runtime", "onnx", "--precision", "bf16"])
        assert result.exit_code != 0 and "--runtime onnx runs fp32, but --precision bf16 was asked for" in result.output


def _extract(dataset: Path, model: Path, *extra: str) -> mlflow.entities.Run:
    result = CliRunner().invoke(
        cli, ["extract", "--dataset", str(dataset), "--model", str(model), "--umap_max_points", "100", *extra]
    )
    assert result.exit_code == 0, result.output
    return mlflow.search_runs(output_format="list", order_by=["attributes.start_time DESC"], max_results=1)[0]


def _features(run: mlflow.entities.Run) -> np.ndarray:
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="features/features.npz")
    return np.concatenate(list(features.load(Path(path)).features.values()))


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_extract_runtime_onnx_logs_the_runtime_and_torch_features(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    onnx_run = _extract(small_dataset, tiny_model_dir, "--runtime", "onnx")
    assert onnx_run.data.tags["runtime"] == "onnx" and onnx_run.data.tags["features_runtime"] == "onnx"
    torch_run = _extract(small_dataset, tiny_model_dir, "--runtime", "torch", "--precision", "fp32")
    assert torch_run.data.tags["features_run_id"] == torch_run.info.run_id, "the onnx features were reused"
    np.testing.assert_allclose(_features(onnx_run), _features(torch_run), atol=1e-4, rtol=1e-4)


def test_extract_runtime_auto_is_torch_with_native_bf16_else_onnx(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if models.native_bf16():
        native = _extract(small_dataset, tiny_model_dir)
        assert native.data.tags["runtime"] == "torch" and "native bf16" in native.data.tags["runtime_reason"]
    monkeypatch.setattr(models, "native_bf16", lambda: False)
    emulated = _extract(small_dataset, tiny_model_dir)
    tags = emulated.data.tags
    assert tags["runtime"] == "onnx" and tags["runtime_reason"] == "no native bf16 on this CPU: ONNX Runtime fp32"
    assert tags["features_precision"] == "fp32"


@pytest.mark.slow
def test_onnx_features_of_the_packaged_encoder_equal_torch_fp32(tmp_path: Path) -> None:
    encoder = features.load_encoder(models.resolve(models.DEFAULT_MODEL), "fp32", "auto")
    session = onnx_runtime.load(encoder.model, encoder.tokenizer, runtime="onnx", kind="pooled", folder=tmp_path)
    texts = sample_texts(500)
    ours = features.extract(texts, encoder, progress=False).features
    theirs = onnx_runtime.run(session, encoder.tokenizer, texts, max_length=128, batch_size=32).pooled
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("policy", "spinning"), [(None, "0"), ("PASSIVE", "0"), ("ACTIVE", "1")])
def test_sessions_follow_openmps_wait_policy(
    classifier: tuple[object, object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str | None,
    spinning: str,
) -> None:
    # ONNX Runtime's threads spin while idle by default; they sleep unless the user asked OpenMP to spin.
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    model, tokenizer = classifier
    session = onnx_runtime.load(model, tokenizer, runtime="onnx", kind="logits", threads=2, folder=tmp_path)

    options = session.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    assert options.intra_op_num_threads == 2
