"""One engine decision (emotion_exp.engine): the runtime and precision as asked, decided by the hardware where auto."""

from __future__ import annotations

import pytest

from emotion_exp import batching, engine, models, onnx_runtime
from emotion_exp.errors import UserError


@pytest.fixture
def onnx_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runtime, "available", lambda: True)


@pytest.mark.parametrize(
    ("native", "precision", "expected"),
    [
        (True, "auto", ("torch", "bf16", "native bf16 on this CPU: torch bf16")),
        (True, "fp32", ("onnx", "fp32", "fp32 asked for: ONNX Runtime fp32")),
        (False, "auto", ("onnx", "fp32", "no native bf16 on this CPU: ONNX Runtime fp32")),
        (False, "fp32", ("onnx", "fp32", "fp32 asked for: ONNX Runtime fp32")),
        (False, "bf16", ("torch", "bf16", "bf16 asked for: torch (ONNX Runtime runs fp32)")),
    ],
)
def test_auto_picks_torch_for_bf16_and_onnx_runtime_for_fp32_on_a_cpu(
    onnx_ready: None, monkeypatch: pytest.MonkeyPatch, native: bool, precision: str, expected: tuple[str, str, str]
) -> None:
    monkeypatch.setattr(models, "native_bf16", lambda: native)
    chosen = engine.resolve("auto", precision, 1)
    assert (chosen.runtime, chosen.precision, chosen.reason) == expected
    assert chosen.threads == 1


def test_a_gpu_runs_torch_in_the_precision_it_runs_well(onnx_ready: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(batching, "best_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(models, "native_bf16", lambda: True)
    chosen = engine.resolve("auto", "auto", 1)
    assert (chosen.runtime, chosen.precision, chosen.reason) == ("torch", "bf16", "a GPU is present: torch")


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_an_onnx_runtime_with_bf16_is_one_error_wherever_it_is_asked(onnx_ready: None, runtime: str) -> None:
    message = f"runtime {runtime} runs fp32, but (--)?precision bf16 was asked for"
    with pytest.raises(UserError, match=message):
        engine.resolve(runtime, "bf16")
    with pytest.raises(UserError, match=message):
        engine.loading_config(runtime, "bf16")
    with pytest.raises(UserError, match=message):  # a model logged with bf16, loaded with an ONNX runtime
        engine.for_loaded_model({engine.RUNTIME: runtime}, "bf16", 1, exported=True)


def test_a_loaded_model_keeps_its_logged_precision_unless_its_loader_asks(
    onnx_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "native_bf16", lambda: True)
    assert engine.for_loaded_model({}, "fp32", 1, exported=True).precision == "fp32"
    assert engine.for_loaded_model({}, "auto", 1, exported=True).precision == "bf16"
    assert engine.for_loaded_model({engine.PRECISION: "fp32"}, "auto", 1, exported=True).precision == "fp32"
    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        engine.for_loaded_model({engine.PRECISION: "fp16"}, "auto", 1, exported=True)


def test_the_loading_config_asks_only_for_what_is_not_auto() -> None:
    assert engine.loading_config() is None
    assert engine.loading_config("onnx") == {engine.RUNTIME: "onnx"}
    assert engine.loading_config("torch", "fp32") == {engine.RUNTIME: "torch", engine.PRECISION: "fp32"}


def test_running_a_logged_export_imports_neither_torch_nor_transformers() -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from emotion_exp import engine\n"
        "chosen = engine.for_loaded_model({'runtime': 'onnx'}, 'auto', 'auto', exported=True)\n"
        "chosen = engine.with_threads(chosen, 1)\n"
        "loaded = [name in sys.modules for name in ('torch', 'transformers')]\n"
        "print(chosen.runtime, chosen.from_export, chosen.threads, *loaded)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["onnx", "True", "1", "False", "False"]
