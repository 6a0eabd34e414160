"""OpenMP's settings under contention: extraction texts/s with OpenMP's wait policy as it comes,
PASSIVE, ACTIVE and a short spin (GNU OpenMP's GOMP_SPINCOUNT), on 1 and all threads, on the
machine as it is and with one busy process per core.

This measurement decided a default: the CLI, the pyfunc models and the benchmarks set
OMP_WAIT_POLICY=PASSIVE unless it is set (``threads.prefer_passive_openmp``). OpenMP reads these
settings when torch loads it, so every pass runs in a fresh child process of this script
(``--child``), the settings interleaved round by round; the median of the rounds counts. Model
loading happens before the clock starts. ``--interop`` also pins torch's inter-op pool to one
thread in every child, the other knob that could matter. ``--runtime onnx`` measures ONNX Runtime's sessions,
whose idle threads spin only under OMP_WAIT_POLICY=ACTIVE (``onnx_runtime.open_session``).

    python -m benchmarks.openmp [--texts N] [--rounds N] [--interop] [--policies unset,PASSIVE] [--runtime onnx]
                                [--conditions "as is"]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.contention import background_load, load_average
from emotion_exp.config import DEFAULT_MODEL

# The environment of each setting; "unset" is OpenMP's default (GNU OpenMP spins a while, then sleeps).
POLICIES = {
    "unset": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "spin 10000": {"GOMP_SPINCOUNT": "10000"},
}


def child(model: str, texts: int, threads: int, interop: bool, runtime: str) -> None:
    """One pass in this process: print {"rate": texts/s, "gflops": ...} of the extract stage's extraction."""
    import torch

    if interop:
        torch.set_num_interop_threads(1)
    from benchmarks import peak
    from benchmarks.finetune import emotion_like_texts
    from emotion_exp import features, models

    precision = models.resolve_precision("auto") if runtime == "torch" else "fp32"
    encoder = features.load_encoder(models.resolve(model), precision, threads, runtime=runtime)
    sample = emotion_like_texts(texts, 42)
    features.extract(sample[:32], encoder, progress=False)  # warm-up: kernels, thread pool
    result = features.extract(sample, encoder, progress=False)
    per_text = peak.flops_per_text(encoder.tokenizer, encoder.model.config, sample)
    gflops = result.texts_per_second * per_text / 1e9
    print(json.dumps({"rate": result.texts_per_second, "gflops": gflops, "precision": encoder.precision}))


def one_pass(args: argparse.Namespace, policy: str, threads: int) -> tuple[float, float, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    command = [sys.executable, "-m", "benchmarks.openmp", "--child", "--threads", str(threads)]
    command += ["--model", args.model, "--texts", str(args.texts), "--runtime", args.runtime]
    command += ["--interop"] if args.interop else []
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child pass failed ({policy}, {threads} threads):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["rate"], result["gflops"], result["precision"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--texts", type=int, default=640, help="Texts extracted per pass.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interop", action="store_true", help="Also pin torch's inter-op pool to one thread.")
    parser.add_argument("--policies", default=",".join(POLICIES), help="Comma-separated settings to compare.")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnx"), help="The engine measured.")
    parser.add_argument(
        "--conditions",
        default="as is,busy",
        help="Comma-separated: 'as is' (the machine as it is), 'busy' (one busy process per core).",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.texts, args.threads, args.interop, args.runtime)
        return

    from benchmarks import peak
    from emotion_exp import models, threads

    policies = args.policies.split(",")
    conditions = args.conditions.split(",")
    if unknown := set(conditions) - {"as is", "busy"}:
        parser.error(f"--conditions: expected 'as is' and/or 'busy', got {', '.join(sorted(unknown))}")
    cores = threads.available_cores()
    counts = sorted({1, cores})
    machine_peak = peak.matmul_peak(cores)  # in this process, before any pass or load
    print(
        f"cpu: {models.cpu_description()}; {cores} available cores; {args.texts} texts per pass; {args.runtime}",
        flush=True,
    )
    print(f"matmul peak GFLOP/s: {peak.describe(machine_peak)}; each cell: median texts/s (its share of the peak)")
    print(f"{'condition':<10}{'OpenMP setting':<17}" + "".join(f"{f'{n} thread(s)':>18}" for n in counts) + "  load")
    for condition in conditions:
        busy = condition == "busy"
        rates: dict[tuple[str, int], list[tuple[float, float]]] = {(p, n): [] for p in policies for n in counts}
        with background_load(cores) if busy else contextlib.nullcontext():
            time.sleep(1 if busy else 0)
            for round_ in range(args.rounds):
                for key, measured in rates.items():
                    rate, gflops, precision = one_pass(args, *key)
                    measured.append((rate, gflops))
                    print(f"  {condition} round {round_ + 1}: {key} {rate:.1f} texts/s ({precision})", file=sys.stderr)
            load = load_average()
        for policy in policies:
            cells = ""
            for n in counts:
                rate, gflops = statistics.median_low(rates[policy, n])  # by rate: work per text is the same
                cells += f"{rate:>11.1f} ({peak.share(gflops, machine_peak, precision, n):.0%})"
            label = f"+{cores} busy" if busy else condition
            print(f"{label:<10}{policy:<17}{cells}  {load}", flush=True)


if __name__ == "__main__":
    main()
