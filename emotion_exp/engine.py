"""One engine decision: the runtime, precision and threads of the forward passes, and why.

Made once, on the machine that runs them: where a stage run opens (``resolve``), where fine-tuning
starts (``for_training``) and where a logged model loads (``for_loaded_model``). Everything below
takes the resolved ``Engine``. The rules:

- precision ``auto``: bf16 where the hardware runs it natively (``models.native_bf16``), else fp32;
- runtime ``auto``: torch on a GPU or for bf16, else ONNX Runtime fp32 (exact to torch fp32 and
  about twice as fast on a CPU), else torch fp32 where onnxruntime is missing; never int8 (it
  changes labels);
- ONNX Runtime runs fp32 only: an ONNX runtime with bf16 is one error, raised here;
- threads: ``threads.use`` where torch is installed, else the cores this process may use.

This module never imports mlflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emotion_exp import batching, models, onnx_runtime
from emotion_exp import threads as thread_rule
from emotion_exp.config import PRECISIONS, RUNTIMES
from emotion_exp.errors import UserError

ONNX_RUNTIMES = ("onnx", "onnx-int8")
RUNTIME = "runtime"
PRECISION = "precision"
"""The keys of a logged model's ``model_config`` that ask for its runtime and precision where it loads."""


@dataclass(frozen=True)
class Engine:
    """What runs the forward passes: ``runtime`` (torch, onnx or onnx-int8), ``precision`` (fp32 or bf16),
    ``threads`` (the intra-op count) and ``reason``, why that runtime. ``from_export``: it runs a logged
    model's own ONNX export, so neither torch nor transformers is imported for it."""

    runtime: str
    precision: str
    threads: int
    reason: str
    from_export: bool = False

    def tags(self) -> dict[str, str]:
        """The run tags that record the decision."""
        return {"runtime": self.runtime, "runtime_reason": self.reason, "resolved_precision": self.precision}


def resolve(
    runtime: str = "auto", precision: str = "auto", threads: str | int = "auto", *, onnx_ready: bool | None = None
) -> Engine:
    """The engine for ``runtime`` and ``precision`` as asked (``auto`` or a choice) on this machine.

    ``onnx_ready`` says whether ONNX can run here (default ``onnx_runtime.available()``: onnxruntime
    and onnx to export). It is asked only where the answer depends on it, since importing them
    takes most of a second.
    """
    _check(runtime, precision)
    chosen, resolved, reason = _decide(runtime, precision, onnx_ready)
    return Engine(chosen, resolved, thread_rule.use(threads), reason)


def _decide(runtime: str, precision: str, onnx_ready: bool | None) -> tuple[str, str, str]:
    """(runtime, precision, reason) by the rules above; torch is imported only where ``auto`` asks the hardware."""

    def ready() -> bool:
        return onnx_runtime.available() if onnx_ready is None else onnx_ready

    if runtime in ONNX_RUNTIMES:
        if not ready():
            raise UserError(
                f"--runtime {runtime} needs onnxruntime and onnx, not installed here: {onnx_runtime.INSTALL_HINT}."
            )
        return runtime, "fp32", "asked for"
    if runtime == "torch":
        return "torch", models.resolve_precision(precision), "asked for"
    if batching.best_device().type != "cpu":
        return "torch", models.resolve_precision(precision), "a GPU is present: torch"
    if precision == "bf16":
        return "torch", "bf16", "bf16 asked for: torch (ONNX Runtime runs fp32)"
    if precision == "auto" and models.native_bf16():
        return "torch", "bf16", "native bf16 on this CPU: torch bf16"
    why = "fp32 asked for" if precision == "fp32" else "no native bf16 on this CPU"
    if not ready():
        return "torch", "fp32", f"{why}, onnxruntime not installed ({onnx_runtime.INSTALL_HINT}): torch fp32"
    return "onnx", "fp32", f"{why}: ONNX Runtime fp32"


def for_training(precision: str, threads: str | int) -> Engine:
    """Fine-tuning's engine: torch, in ``precision`` as ``resolve`` decides it."""
    return resolve("torch", precision, threads)


def for_loaded_model(
    model_config: Mapping[str, Any], logged_precision: str, threads: str | int, *, exported: bool
) -> Engine:
    """The engine of a logged encoder model where it loads: its ``model_config`` asks (``RUNTIME``,
    ``PRECISION``), else the precision it was logged with; ``exported`` when it carries its ONNX
    serving folder.

    Where torch is not installed the logged export serves (runtime ``auto`` and ``onnx``); elsewhere
    the rules of ``resolve`` hold, and a model logged without an export is exported as it loads. An
    ONNX runtime that runs the logged export imports neither torch nor transformers.
    """
    runtime = str(model_config.get(RUNTIME, "auto"))
    precision = str(model_config.get(PRECISION, logged_precision))
    _check(runtime, precision, prefix="")
    if onnx_runtime.importable("torch") and onnx_runtime.importable("transformers"):
        # The logged fp32 export needs onnxruntime only; int8 (quantize_dynamic) and an export at load need onnx.
        exported_ready = exported and runtime != "onnx-int8" and onnx_runtime.importable("onnxruntime")
        chosen, resolved, reason = _decide(runtime, precision, True if exported_ready else None)
        if exported and chosen in ONNX_RUNTIMES:
            return Engine(chosen, resolved, _cores(threads), reason, from_export=True)
        return Engine(chosen, resolved, thread_rule.use(threads), reason)
    if runtime == "torch":
        raise UserError("runtime torch needs torch and transformers, not installed here: pass runtime auto or onnx.")
    if precision == "bf16":
        raise UserError(
            "precision bf16 needs torch and transformers, not installed here: pass precision auto or fp32 (the "
            'logged ONNX export runs fp32; model_config {"precision": "fp32"}).'
        )
    if not exported:
        raise UserError(
            "This model was logged without its ONNX export, and torch is not installed here: install torch and "
            "transformers, or log the model again (the finetune stage logs the export)."
        )
    if not onnx_runtime.importable("onnxruntime") or (runtime == "onnx-int8" and not onnx_runtime.importable("onnx")):
        raise UserError(f"runtime {runtime} needs onnxruntime (and onnx for onnx-int8), not installed here.")
    if runtime == "auto":
        return Engine("onnx", "fp32", _cores(threads), "torch is not installed here: the logged ONNX export", True)
    return Engine(runtime, "fp32", _cores(threads), "asked for", from_export=True)


def with_threads(engine: Engine, threads: str | int) -> Engine:
    """``engine`` on another thread count (set in torch too, unless it runs a logged export)."""
    return dataclasses.replace(engine, threads=_cores(threads) if engine.from_export else thread_rule.use(threads))


def _cores(threads: str | int) -> int:
    """The count ``threads`` asks for without torch: a number, or ``auto``, the cores this process may use."""
    return thread_rule.parse(threads) or thread_rule.available_cores()


def loading_config(runtime: str = "auto", precision: str = "auto") -> dict[str, str] | None:
    """The ``model_config`` that asks a logged model for ``runtime`` and ``precision`` where it loads.

    ``auto`` asks for nothing: the model keeps what it was logged with (its precision; runtime
    ``auto``), and models logged before a key existed get no warning from MLflow about it.
    """
    asked = {RUNTIME: runtime, PRECISION: precision}
    _check(runtime, precision)
    return {key: value for key, value in asked.items() if value != "auto"} or None


def _check(runtime: str, precision: str, prefix: str = "--") -> None:
    if runtime not in RUNTIMES:
        raise UserError(f"{prefix}runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}.")
    if precision not in PRECISIONS:
        raise UserError(f"{prefix}precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if runtime in ONNX_RUNTIMES and precision == "bf16":
        raise UserError(
            f"{prefix}runtime {runtime} runs fp32, but {prefix}precision bf16 was asked for; pass {prefix}precision "
            f"auto or fp32, or {prefix}runtime torch for bf16."
        )
