"""The machine's own limit, measured in the same run as a benchmark, and the work an encoder does.

``matmul_peak`` times square matrix multiplies (the best of a few) in fp32 and, where the CPU runs
it natively, bf16, on one thread and on all; ``encoder_flops`` counts the multiply-adds of a
BERT-style encoder over the batches it really computes (padding included), so a benchmark can
print achieved GFLOP/s and its share of the peak.

    python -m benchmarks.peak
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

SIZE = 1024


def matmul_gflops(dtype_name: str, threads: int, size: int = SIZE, repeats: int = 5) -> float:
    """Best GFLOP/s of a ``size`` x ``size`` matrix multiply in ``dtype_name`` on ``threads`` threads."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.matmul(a, b)  # warm-up: kernel selection, thread pool start
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / best / 1e9


def matmul_peak(cores: int) -> dict[tuple[str, int], float]:
    """GFLOP/s per (precision, threads): fp32 and native bf16, on 1 and on ``cores`` threads."""
    from emotion_exp import models

    precisions = ["fp32", "bf16"] if models.native_bf16() else ["fp32"]
    counts = sorted({1, cores})
    return {(p, n): matmul_gflops(p, n) for p in precisions for n in counts}


def encoder_flops(
    model_config: object, lengths: Sequence[int], batch_size: int, *, training: bool = False, token_budget: int = 0
) -> float:
    """Floating-point operations of a BERT-style encoder over length-sorted batches of ``lengths``.

    Per layer and token: the Q, K, V and output projections (4 h^2 multiply-adds) and the feed-forward
    block (2 h i); per layer and pair of tokens in a batch row: scores and weighted sum (2 h). Each
    batch pads to its longest text, as ``batching.sorted_batches`` does (``batch_size`` texts, or
    ``token_budget`` padded tokens, a batch). Training costs three forward passes (the backward pass is
    about twice the forward). Embeddings, norms and heads are left out.
    """
    from emotion_exp import batching

    h, i = model_config.hidden_size, model_config.intermediate_size
    layers = model_config.num_hidden_layers
    lengths = np.asarray(lengths)
    macs = 0.0
    for positions in batching.batch_positions(lengths, batch_size, token_budget):
        padded = int(lengths[positions].max())
        rows = len(positions)
        macs += rows * padded * layers * (4 * h * h + 2 * h * i) + rows * layers * 2 * padded * padded * h
    return 2 * macs * (3 if training else 1)


def describe(peak: dict[tuple[str, int], float]) -> str:
    """One line: the measured peaks."""
    return ", ".join(f"{p} {n} thread{'s' * (n > 1)} {gflops:.0f}" for (p, n), gflops in peak.items())


def share(gflops: float, peak: dict[tuple[str, int], float], precision: str, threads: int) -> float:
    """``gflops`` as a share of the measured peak for ``precision`` on ``threads`` threads (nearest measured)."""
    counts = [n for p, n in peak if p == precision]
    nearest = min(counts, key=lambda n: abs(n - threads))
    return gflops / peak[(precision, nearest)]


def flops_per_text(
    tokenizer: object,
    model_config: object,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 32,
    training: bool = False,
) -> float:
    """FLOPs per text of encoding ``texts`` as the stages do: truncated at ``max_length``, in batches
    of ``batch_size`` by length (training's length-grouped batches are close to sorted ones)."""
    lengths = [min(len(ids), max_length) for ids in tokenizer(list(texts))["input_ids"]]
    return encoder_flops(model_config, lengths, batch_size, training=training) / len(texts)


def achieved(rate: float, per_text: float, peak: dict[tuple[str, int], float], precision: str, threads: int) -> str:
    """``rate`` texts/s at ``per_text`` FLOPs each as GFLOP/s and as a share of the measured peak."""
    gflops = rate * per_text / 1e9
    return f"{gflops:.0f} GFLOP/s, {share(gflops, peak, precision, threads):.0%}"


def main() -> None:
    from emotion_exp import models, threads

    cores = threads.available_cores()
    print(f"CPU: {models.cpu_description()}; {cores} available cores")
    print(f"matmul {SIZE}x{SIZE} GFLOP/s (best of 5): {describe(matmul_peak(cores))}")


if __name__ == "__main__":
    main()
