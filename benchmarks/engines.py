"""Other engines for extraction, against ours on the same texts in one process: ``torch.compile`` of
the encoder and ONNX Runtime.

Every engine runs the extract stage's tokenization and length-sorted batches and takes the [CLS]
state. ``torch.compile`` (dynamic shapes) is timed with its compile time, the first pass, and
after it; it pays only on inputs large enough to earn that back, which the output says. ONNX
Runtime runs an fp32 export of the encoder (``torch.onnx.export``); it needs ``onnxruntime`` and
``onnx`` (``pip install onnxruntime onnx``), and is skipped with that hint without them. Passes
are interleaved and the best counts; max |diff| is against ours in fp32.

    python -m benchmarks.engines [--texts N] [--repeats N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emotion_exp.config import DEFAULT_MODEL
from emotion_exp.threads import prefer_passive_openmp


def onnx_runner(encoder: object, folder: Path, max_length: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """[CLS] states of ``encoder`` exported to ONNX and run by ONNX Runtime on our batches."""
    import onnxruntime
    import torch

    from emotion_exp import batching

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    sample = encoder.tokenizer(["a first text", "and a second, longer one"], padding=True, return_tensors="pt")
    path = folder / "encoder.onnx"
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        LastHiddenState(encoder.model).eval(),
        (sample["input_ids"], sample["attention_mask"]),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        opset_version=17,
        dynamo=False,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(texts: list[str]) -> np.ndarray:
        tokenized = batching.tokenize(texts, encoder.tokenizer, max_length)
        states = np.empty((len(texts), encoder.model.config.hidden_size), dtype=np.float32)
        for positions, batch in batching.sorted_batches(tokenized, encoder.tokenizer, batch_size):
            feeds = {name: batch[name].numpy() for name in ("input_ids", "attention_mask")}
            states[positions] = session.run(None, feeds)[0][:, 0]
        return states

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    args = parser.parse_args()
    prefer_passive_openmp()  # as the CLI does, before torch loads

    import torch

    from benchmarks import peak
    from benchmarks.finetune import emotion_like_texts
    from emotion_exp import features, models
    from emotion_exp.threads import ThreadTuner, available_cores

    cores = available_cores()
    ours = features.load_encoder(models.resolve(args.model), models.resolve_precision("auto"), threads=cores)
    ours_fp32 = dataclasses.replace(ours, precision="fp32", tuner=ThreadTuner(cores))
    texts = emotion_like_texts(args.texts, 42)

    def extraction(encoder: features.Encoder) -> Callable[[list[str]], np.ndarray]:
        options = {"max_length": args.max_length, "batch_size": args.batch_size, "progress": False}
        return lambda batch: features.extract(batch, encoder, pooling="cls", **options).features

    engines = {f"ours {ours.precision}": extraction(ours), "ours fp32": extraction(ours_fp32)}
    compiled = dataclasses.replace(ours, model=torch.compile(ours.model, dynamic=True), tuner=ThreadTuner(cores))
    start = time.perf_counter()
    extraction(compiled)(texts)
    compile_seconds = time.perf_counter() - start
    engines[f"torch.compile {ours.precision}"] = extraction(compiled)
    with tempfile.TemporaryDirectory(prefix="emotion-bench-engines-") as folder:
        try:
            engines["onnxruntime fp32"] = onnx_runner(ours_fp32, Path(folder), args.max_length, args.batch_size)
        except ImportError as missing:
            print(f"onnxruntime skipped ({missing.name} missing): pip install onnxruntime onnx")
        for run in engines.values():
            run(texts[:64])  # warm-up
        best: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in engines.items():
                start = time.perf_counter()
                outputs[name] = run(texts)
                best[name] = max(best.get(name, 0.0), len(texts) / (time.perf_counter() - start))

    machine_peak = peak.matmul_peak(cores)
    per_text = peak.flops_per_text(
        ours.tokenizer, ours.model.config, texts, max_length=args.max_length, batch_size=args.batch_size
    )
    print(f"cpu: {models.cpu_description()}; {cores} threads; load average {os.getloadavg()[0]:.1f}")
    print(f"{args.texts} texts (emotion lengths), batches of {args.batch_size}, best of {args.repeats}")
    print(f"matmul peak GFLOP/s: {peak.describe(machine_peak)}")
    baseline = best[f"ours {ours.precision}"]
    print(f"{'engine':<24}{'texts/s':>9}{'vs ours':>9}{'max |diff| vs ours fp32':>26}  of the peak")
    for name, rate in best.items():
        diff = float(np.abs(outputs[name] - outputs["ours fp32"]).max())
        precision = "fp32" if "fp32" in name else ours.precision
        of_peak = peak.achieved(rate, per_text, machine_peak, precision, cores)
        print(f"{name:<24}{rate:>9.1f}{rate / baseline:>8.2f}x{diff:>26.2e}  {of_peak}")
    name = f"torch.compile {ours.precision}"
    saved_per_text = 1 / baseline - 1 / best[name]
    first_pass_extra = compile_seconds - len(texts) / best[name]
    if saved_per_text > 0:
        break_even = first_pass_extra / saved_per_text
        print(f"torch.compile: first pass {compile_seconds:.1f} s; pays after {break_even:,.0f} texts")
    else:
        print(f"torch.compile: first pass {compile_seconds:.1f} s; no faster after it, so it never pays")


if __name__ == "__main__":
    main()
