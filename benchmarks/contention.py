"""Threads under contention: extraction and a short fine-tune on 1 thread, on all available cores
and on ``auto`` (the default: torch's own count, capped by the usable cores), on the machine as it
is and with a bounded background load.

The background load is one busy Python process per available core, started before and stopped
after the loaded measurements (always, also on Ctrl-C). Settings alternate within each round and
the median of the rounds counts, so a burst of other work slows all settings alike; OpenMP's
passive wait policy as the CLI sets it. Goal: ``auto`` at least 0.9x of the best fixed setting in
both conditions. A measuring tuner was the default until it never beat torch's own count by 10%
(docs/performance.md keeps that evidence).

    python -m benchmarks.contention [--quick] [--texts N] [--rounds N] [--model SPEC]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from emotion_exp.config import DEFAULT_MODEL, FinetuneConfig
from emotion_exp.threads import prefer_passive_openmp


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        pass


@contextlib.contextmanager
def background_load(processes: int) -> Iterator[None]:
    """``processes`` busy processes for the duration of the block, stopped and joined afterwards."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join()


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def extraction_rate(texts: list[str], encoder: object, setting: str) -> tuple[float, int]:
    """Texts/s of the extract stage's extraction on ``setting`` threads; and the count used."""
    from emotion_exp import features, threads

    encoder = dataclasses.replace(encoder, threads=threads.use(setting))
    result = features.extract(texts, encoder, progress=False)
    return result.texts_per_second, result.threads


def training_rate(texts: list[str], config: FinetuneConfig, setting: str, workdir: Path) -> tuple[float, int]:
    """Training texts/s over one epoch with the stage's Trainer on ``setting`` threads; and the count used."""
    from transformers import PrinterCallback, set_seed

    from emotion_exp import finetune, models, threads

    resolved = models.resolve(config.model)
    tokenizer = models.load_tokenizer(resolved)
    rows, _ = finetune.examples(texts, [i % 6 for i in range(len(texts))], tokenizer, config.max_length)
    set_seed(config.seed)
    model = finetune.load_classifier(resolved, [str(i) for i in range(6)])
    args = dataclasses.replace(
        finetune.training_arguments(
            config,
            workdir,
            models.resolve_precision(config.precision),
            steps_per_epoch=math.ceil(len(rows) / config.batch_size),
        ),
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        logging_first_step=False,
        disable_tqdm=True,
    )
    count, stopwatch = threads.use(setting), finetune.Stopwatch()
    trainer = finetune.make_trainer(model, tokenizer, args, rows, callbacks=[stopwatch])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return stopwatch.rate(len(rows)), count


def measure(name: str, settings: list[str], rounds: int, run: object) -> dict[str, tuple[float, int]]:
    """Median rate per setting over ``rounds`` interleaved rounds, with the thread count each used."""
    rates: dict[str, list[float]] = {s: [] for s in settings}
    chosen: dict[str, int] = {}
    for round_ in range(rounds):
        for setting in settings:
            rate, chosen[setting] = run(setting)
            rates[setting].append(rate)
            print(
                f"  {name} round {round_ + 1}/{rounds} threads={setting:<5} {rate:8.1f} texts/s {chosen[setting]}",
                file=sys.stderr,
                flush=True,
            )
    return {s: (statistics.median(rates[s]), chosen[s]) for s in settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--texts", type=int, default=1000, help="Texts extracted per pass.")
    parser.add_argument("--train-texts", type=int, default=960, help="Texts per training epoch (batches of 16).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 texts, 160 training texts, 2 rounds.")
    parser.add_argument("--work", choices=("both", "extraction", "fine-tune"), default="both")
    args = parser.parse_args()
    prefer_passive_openmp()  # as the CLI does, before torch loads
    count, train_count, rounds = (300, 160, 2) if args.quick else (args.texts, args.train_texts, args.rounds)

    from benchmarks import peak
    from benchmarks.finetune import emotion_like_texts
    from emotion_exp import features, models, threads

    torch_default = threads.torch_default()  # read before anything sets a count
    cores = threads.available_cores()
    settings = list(dict.fromkeys(["1", str(cores)])) + ["auto"]
    texts = emotion_like_texts(count, 42)
    train_texts = texts[:train_count] if train_count <= count else emotion_like_texts(train_count, 43)
    encoder = features.load_encoder(models.resolve(args.model), models.resolve_precision("auto"))
    config = FinetuneConfig(model=args.model, batch_size=16, epochs=1)
    features.extract(texts[:32], encoder, progress=False)  # warm-up: kernels, thread pool
    machine_peak = peak.matmul_peak(cores)  # quiet, before any background load
    model_config, training_precision = encoder.model.config, models.resolve_precision(config.precision)
    work_flops = {  # per text, and the precision the work runs in
        "extraction": (peak.flops_per_text(encoder.tokenizer, model_config, texts), encoder.precision),
        "fine-tune": (
            peak.flops_per_text(
                encoder.tokenizer, model_config, train_texts, max_length=config.max_length, batch_size=16, training=True
            ),
            training_precision,
        ),
    }

    results: dict[str, dict[str, dict[str, tuple[float, int]]]] = {}
    loads: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="emotion-bench-contention-") as folder:
        for condition in ("as is", f"+{cores} busy"):
            load = background_load(cores) if condition != "as is" else contextlib.nullcontext()
            with load:
                time.sleep(1 if condition != "as is" else 0)
                print(f"{condition}: load average {load_average()}", file=sys.stderr, flush=True)
                results[condition] = {}
                if args.work in ("both", "extraction"):
                    results[condition]["extraction"] = measure(
                        "extract", settings, rounds, lambda s: extraction_rate(texts, encoder, s)
                    )
                if args.work in ("both", "fine-tune"):
                    results[condition]["fine-tune"] = measure(
                        "train",
                        settings,
                        rounds,
                        lambda s: training_rate(train_texts, config, s, Path(folder)),
                    )
                loads[condition] = load_average()

    print(
        f"cpu: {models.cpu_description()}; {cores} available cores; torch's default {torch_default} threads; "
        f"precision {encoder.precision}"
    )
    print(f"{count} texts extracted, {train_count} trained (batch 16, one epoch) per pass; median of {rounds} rounds")
    print(f"matmul peak GFLOP/s (quiet, before the load): {peak.describe(machine_peak)}")
    print(
        f"{'condition':<12}{'work':<12}"
        + "".join(f"{'threads=' + s:>14}" for s in settings)
        + f"{'auto/best':>11}  auto used  {'auto: of the peak':<22}load (1/5/15 min)"
    )
    for condition, works in results.items():
        for work, by_setting in works.items():
            best_fixed = max(rate for s, (rate, _) in by_setting.items() if s != "auto")
            auto_rate, auto_used = by_setting["auto"]
            per_text, precision = work_flops[work]
            of_peak = peak.achieved(auto_rate, per_text, machine_peak, precision, auto_used)
            print(
                f"{condition:<12}{work:<12}"
                + "".join(f"{by_setting[s][0]:>14.1f}" for s in settings)
                + f"{auto_rate / best_fixed:>10.2f}x  {auto_used!s:<10} "
                + f"{of_peak:<22}{loads[condition]}"
            )


if __name__ == "__main__":
    main()
