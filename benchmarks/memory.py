"""Peak memory (RSS) of extraction and fine-tuning on 16,000 emotion-like texts; goal under 3 GiB.

Each measurement runs in a fresh child process, so one does not inherit the other's peak; the
study's extraction (the whole split padded to its longest text, batches of 1,000) is measured
beside ours as the baseline. Fine-tuning peaks within the first steps (weights, optimizer
state, activations of the largest batch), so a bounded number of steps over the full 16,000
texts measures it.

    python -m benchmarks.memory            # 16,000 texts, 60 training steps
    python -m benchmarks.memory --quick    # 2,000 texts, 10 steps
    python -m benchmarks.memory --track    # also log the figures to MLflow
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GOAL_GIB = 3.0


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _splits(count: int):
    """The bundled sample with ``count`` texts drawn from all its splits as the train split."""
    from benchmarks import harness
    from emotion_exp import data
    from emotion_exp.config import DataConfig
    from emotion_exp.data import DatasetSplits

    sample = data.load_splits(DataConfig())
    train = harness.sample(count)
    return DatasetSplits(train, sample.validation, sample.test, sample.label_names, sample.source, sample.name)


def child(task: str, count: int, steps: int, workdir: str) -> dict[str, float]:
    """Do one task in this process and return its peak RSS."""
    from emotion_exp import features, finetune, models
    from emotion_exp.config import DEFAULT_MODEL, FinetuneConfig

    splits = _splits(count)
    texts = splits.train["text"].tolist()
    resolved = models.resolve(DEFAULT_MODEL)
    if task == "extract-study":
        from benchmarks.extract import study_method

        study_method(texts, features.load_encoder(resolved, "fp32"))
    elif task == "extract":
        features.extract(texts, features.load_encoder(resolved, models.resolve_precision("auto")), progress=False)
    elif task == "finetune":
        config = FinetuneConfig(epochs=steps * 32 / count, batch_size=32, registered_model="")
        finetune.train(splits, resolved, config, checkpoint_dir=Path(workdir) / "checkpoints")
    else:
        raise SystemExit(f"unknown task {task!r}")
    return {"peak_gib": _peak_gib()}


def measure(task: str, count: int, steps: int, workdir: str) -> float:
    """Run ``task`` in a child process and return its peak RSS in GiB."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--child",
            task,
            "--count",
            str(count),
            "--steps",
            str(steps),
            "--workdir",
            workdir,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"{task} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_gib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 texts and 10 steps.")
    parser.add_argument("--track", action="store_true", help="Log the figures to MLflow (experiment 'benchmarks').")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.count, args.steps, args.workdir)))
        return

    import tempfile

    from emotion_exp import models

    count, steps = (2_000, 10) if args.quick else (16_000, 60)
    print(f"CPU: {models.cpu_description()}")
    print(f"{count:,} texts; fine-tuning {steps} steps of 32")
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="emotion-memory-") as workdir:
        for task in ("extract-study", "extract", "finetune"):
            peaks[task] = measure(task, count, steps, workdir)
            verdict = (
                "" if task == "extract-study" else ("  (goal met)" if peaks[task] < GOAL_GIB else "  (over the goal)")
            )
            print(f"{task:>14}: peak RSS {peaks[task]:.2f} GiB{verdict}")
    print(f"extraction peak, ours / study's: {peaks['extract'] / peaks['extract-study']:.2f}")
    if args.track:
        from benchmarks.harness import log

        log(
            "memory",
            {"texts": count, "steps": steps, "cpu": models.cpu_description()},
            {f"peak_gib_{task.replace('-', '_')}": value for task, value in peaks.items()},
        )


if __name__ == "__main__":
    main()
