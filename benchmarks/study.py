"""How long the README's first command takes here, and where the time goes: the whole study on the bundled sample.

Runs ``mlflow run <checkout> --env-manager local`` (any ``-P key=value`` given is passed on) in a fresh
folder with its own sqlite store (the user's caches as they are: the encoder, its ONNX export), and
prints wall time, the CPU time of the study's processes, their peak memory, the CPU and the load
average before and after. Then where the wall time went, read from the
runs' start and end times in the store: ``mlflow run`` starting and creating the store, the study's
process until its first stage (imports, loading the data, the parent run's own logging), each stage
run, the parent's work between and after the stages, and the process's exit; and, apart, how long a
fresh process takes to import what the study loads.

``--baseline PATH`` runs the same study from another checkout (its MLproject and its emotion_exp)
too, interleaved round by round with this one (``--rounds``; each round starts with the other
checkout than the last), and prints the ratio of the medians. On a machine shared with other jobs
the wall time grows with the load; the CPU time barely does.

    python -m benchmarks.study                                   # the README's command as it is
    python -m benchmarks.study -P epochs=1                       # a shorter study
    python -m benchmarks.study --baseline /tmp/main --rounds 2   # against another checkout, interleaved
    python -m benchmarks.study --log out.txt                     # and keep what it printed
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a study's process imports, timed apart in a fresh process: the stages and the libraries they load.
IMPORTS = (
    "emotion_exp.cli, emotion_exp.workflows.study, emotion_exp.stages.extract, emotion_exp.stages.finetune, "
    "emotion_exp.stages.feature_head, emotion_exp.stages.tfidf, emotion_exp.stages.evaluate, torch, transformers, "
    "onnxruntime, umap, sklearn.linear_model"
)


@dataclass
class Study:
    """One study run: its wall and CPU seconds, the load around it, and its wall time by part."""

    wall: float
    cpu: float
    load: tuple[float, float]
    parts: dict[str, float] = field(default_factory=dict)


def run_study(checkout: Path, params: list[str], log: Path | None) -> Study:
    """The study of ``checkout`` (its MLproject, its emotion_exp first on the path) in a fresh folder."""
    command = [sys.executable, "-m", "mlflow", "run", str(checkout), "--env-manager", "local"]
    for param in params:
        command += ["-P", param]
    with tempfile.TemporaryDirectory(prefix="emotion-bench-study-") as folder:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "PYTHONPATH": str(checkout)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_before = os.getloadavg()[0]
        launched = time.time()
        started = time.perf_counter()
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        ended = time.time()
        load_after = os.getloadavg()[0]
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if log:
            log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            sys.exit(f"the study of {checkout} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        parts = wall_parts(env["MLFLOW_TRACKING_URI"], launched, ended)
    return Study(wall, cpu, (load_before, load_after), parts)


def wall_parts(tracking_uri: str, launched: float, ended: float, experiment_id: str | None = None) -> dict[str, float]:
    """Seconds of each part of one study launched at ``launched`` and ended at ``ended`` (seconds since the epoch),
    from its runs' times in the store at ``tracking_uri`` (one study: in ``experiment_id``, or in the whole store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [experiment_id] if experiment_id else [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    children = sorted(
        (run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda run: run.info.start_time,
    )
    parts = {
        "mlflow run: start, new store": parent.info.start_time / 1000 - launched,
        "study process until its first stage": (children[0].info.start_time - parent.info.start_time) / 1000,
    }
    between, previous_end = 0.0, children[0].info.start_time
    for child in children:
        name = child.data.tags.get("stage", child.info.run_name)
        between += max(0.0, child.info.start_time - previous_end) / 1000
        parts[f"stage {name}"] = parts.get(f"stage {name}", 0.0) + (child.info.end_time - child.info.start_time) / 1000
        previous_end = max(previous_end, child.info.end_time)
    parts["between the stages"] = between
    parts["after the last stage"] = (parent.info.end_time - previous_end) / 1000
    parts["process exit"] = ended - parent.info.end_time / 1000
    return parts


def import_seconds(checkout: Path) -> float:
    """Wall seconds a fresh process takes to import ``IMPORTS`` from ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {IMPORTS}"], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-P", dest="params", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--log", type=Path, help="Write what the last study printed (stdout, then stderr) to this file."
    )
    parser.add_argument("--baseline", type=Path, help="Another checkout to run the same study from, interleaved.")
    parser.add_argument("--rounds", type=int, default=1, help="Studies per checkout; the median counts.")
    args = parser.parse_args()
    if args.baseline and not (args.baseline / "MLproject").is_file():
        parser.error(f"--baseline must be a checkout of this project (with its MLproject); got {args.baseline}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; got {args.rounds}")

    from emotion_exp.models import cpu_description

    checkouts = {"this checkout": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    studies: dict[str, list[Study]] = {name: [] for name in checkouts}
    imports: dict[str, list[float]] = {name: [] for name in checkouts}
    order = list(checkouts)
    for round_ in range(args.rounds):
        for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
            imports[name].append(import_seconds(checkouts[name]))
            study = run_study(checkouts[name], args.params, args.log)
            studies[name].append(study)
            print(
                f"round {round_ + 1}/{args.rounds} {name}: {study.wall:.0f} s wall, {study.cpu:.0f} s CPU, load "
                f"{study.load[0]:.1f} -> {study.load[1]:.1f}",
                file=sys.stderr,
                flush=True,
            )

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"command:      mlflow run <checkout> --env-manager local {' '.join('-P ' + p for p in args.params)}")
    print(f"cpu:          {cpu_description()}")
    print(f"peak memory:  {usage.ru_maxrss / 1024**2:.2f} GiB (largest process of all the studies)")
    for name, runs in studies.items():
        loads = ", ".join(f"{s.load[0]:.1f} -> {s.load[1]:.1f}" for s in runs)
        print(f"\n{name} ({checkouts[name]}): {len(runs)} stud{'ies' if len(runs) > 1 else 'y'}, load average {loads}")
        print(f"  wall time:  {median(s.wall for s in runs):.0f} s (median; each: {listed(s.wall for s in runs)})")
        print(f"  cpu time:   {median(s.cpu for s in runs):.0f} s (user + system of the study's processes)")
        print(f"  imports apart, a fresh process: {median(imports[name]):.1f} s")
        print("  where the wall time went (median seconds):")
        for part in runs[0].parts:
            print(f"    {part:<40}{median(s.parts.get(part, 0.0) for s in runs):>7.1f}")
    if args.baseline:
        ratio = median(s.wall for s in studies["baseline"]) / median(s.wall for s in studies["this checkout"])
        cpu_ratio = median(s.cpu for s in studies["baseline"]) / median(s.cpu for s in studies["this checkout"])
        print(f"\nthis checkout is {ratio:.2f}x faster than the baseline in wall time, {cpu_ratio:.2f}x in CPU time")


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def listed(values: Iterable[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values)


if __name__ == "__main__":
    main()
