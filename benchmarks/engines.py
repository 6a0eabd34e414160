"""Other engines for extraction, against ours on the same texts in one process: ``torch.compile`` of
the encoder and ONNX Runtime.

Every engine runs the extract stage's tokenization and length-sorted batches and takes the [CLS]
state. ``torch.compile`` (dynamic shapes) is timed with its compile time, the first pass, and
after it; it pays only on inputs large enough to earn that back, which the output says. ONNX
Runtime runs the package's fp32 export of the encoder and its int8 quantisation
(``emotion_exp.onnx_runtime``, as ``--runtime onnx`` and ``onnx-int8`` do); without ``onnxruntime``
it is skipped with the install hint. Passes are interleaved and the best counts; max |diff| is
against ours in fp32. Last, a probe trained on ours fp32 train features of the bundled sample is
scored on each engine's test features: the accuracy change int8 costs.

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


def probe_accuracy(encoders: dict[str, object]) -> dict[str, float]:
    """Test accuracy on the bundled sample of one probe trained on the first encoder's train features."""
    from emotion_exp import baselines, data, features
    from emotion_exp.config import BUNDLED_SAMPLE, DataConfig

    splits = data.load_splits(DataConfig(dataset=BUNDLED_SAMPLE))
    first = next(iter(encoders.values()))
    train = features.extract(splits.train["text"].tolist(), first, progress=False).features
    probe = baselines.fit_probe(train, splits.train["label"].to_numpy())
    truth = splits.test["label"].to_numpy()
    return {
        name: float(
            np.mean(probe.predict(features.extract(splits.test["text"].tolist(), e, progress=False).features) == truth)
        )
        for name, e in encoders.items()
    }


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
    from emotion_exp import features, models, onnx_runtime
    from emotion_exp.threads import available_cores

    cores = available_cores()
    ours = features.load_encoder(models.resolve(args.model), models.resolve_precision("auto"), threads=cores)
    ours_fp32 = dataclasses.replace(ours, precision="fp32")
    texts = emotion_like_texts(args.texts, 42)

    def extraction(encoder: features.Encoder) -> Callable[[list[str]], np.ndarray]:
        options = {"max_length": args.max_length, "batch_size": args.batch_size, "progress": False}
        return lambda batch: features.extract(batch, encoder, pooling="cls", **options).features

    engines = {f"ours {ours.precision}": extraction(ours), "ours fp32": extraction(ours_fp32)}
    compiled = dataclasses.replace(ours, model=torch.compile(ours.model, dynamic=True))
    start = time.perf_counter()
    extraction(compiled)(texts)
    compile_seconds = time.perf_counter() - start
    engines[f"torch.compile {ours.precision}"] = extraction(compiled)
    with tempfile.TemporaryDirectory(prefix="emotion-bench-engines-") as folder:
        onnx_encoders: dict[str, features.Encoder] = {}
        if onnx_runtime.available():
            for runtime, name in (("onnx", "onnxruntime fp32"), ("onnx-int8", "onnxruntime int8")):
                session = onnx_runtime.load(
                    ours_fp32.model,
                    ours_fp32.tokenizer,
                    runtime=runtime,
                    kind="pooled",
                    threads=cores,
                    folder=Path(folder),
                )
                onnx_encoders[name] = dataclasses.replace(ours_fp32, session=session)
                engines[name] = extraction(onnx_encoders[name])
        else:
            print(f"onnxruntime skipped (not installed): {onnx_runtime.INSTALL_HINT}")
        for run in engines.values():
            run(texts[:64])  # warm-up
        best: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in engines.items():
                start = time.perf_counter()
                outputs[name] = run(texts)
                best[name] = max(best.get(name, 0.0), len(texts) / (time.perf_counter() - start))
        accuracy = probe_accuracy({"ours fp32": ours_fp32, **onnx_encoders})

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
    print("bundled sample, probe trained on ours fp32 train features, test accuracy with each engine's features:")
    for name, value in accuracy.items():
        print(f"  {name:<22}{value:.2%} ({(value - accuracy['ours fp32']) * 100:+.2f} points)")


if __name__ == "__main__":
    main()
