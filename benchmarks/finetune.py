"""Training throughput: our fine-tuning set-up against the study's, on the same texts in one process.

The study padded every text to the longest of its split and trained in fp32 in random order.
Ours pads each batch to its longest text, groups texts of similar length into batches
(``train_sampling_strategy="group_by_length"``) and trains in bf16 where the CPU runs it
natively. Each set-up trains one epoch over the same texts from the same initial weights with
the same batch size; set-ups alternate over several rounds and the best round counts, so a
burst of other load on the machine does not decide the ratio.

The texts are drawn from the bundled sample and cut or joined to emotion-like lengths (words
per text ~ gamma with the emotion train split's mean 19 and sd 11, 2 to 66 words, the longest
66 as in that split), because the padding the study pays for depends on the length spread.

``--levers`` adds our set-up with one lever switched, each on its own beside ours as it is, the
same hyper-parameters (texts per step, steps, learning-rate schedule, dropout, weight decay, seed):
``compile`` (``torch.compile`` of the model for the training step: TrainingArguments.torch_compile;
two epochs, the second timed, and the compile time, the first epoch's excess, printed with the
number of texts it takes to pay back), ``foreach`` (AdamW's multi-tensor implementation instead of
the fused one the Trainer picks), ``threads=N`` (N intra-op threads), ``logging`` (the stage's
per-step work: its callbacks, a loss point 20 times an epoch and the progress lines). ``--profile``
prints where one epoch's operator time goes (``torch.profiler``).

    python -m benchmarks.finetune [--quick] [--cpu-time] [--track] [--texts N] [--rounds N] [--model SPEC]
                                  [--levers compile,foreach,threads=1,logging] [--profile]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import harness, peak
from emotion_exp import threads
from emotion_exp.config import DEFAULT_MODEL, FinetuneConfig
from emotion_exp.threads import prefer_passive_openmp

# Words per text in the emotion train split (16,000 texts): mean, standard deviation, extremes.
MEAN_WORDS, SD_WORDS, MIN_WORDS, MAX_WORDS = 19.2, 10.9, 2, 66


def emotion_like_texts(count: int, seed: int) -> list[str]:
    """``count`` texts from the bundled sample's words with emotion-like lengths; one of the longest length."""
    import numpy as np

    from emotion_exp import data
    from emotion_exp.config import DataConfig

    rng = np.random.default_rng(seed)
    sentences = [text.split() for text in data.load_splits(DataConfig()).train["text"]]
    shape = (MEAN_WORDS / SD_WORDS) ** 2
    lengths = np.clip(np.rint(rng.gamma(shape, MEAN_WORDS / shape, size=count)), MIN_WORDS, MAX_WORDS).astype(int)
    lengths[np.argmax(lengths)] = MAX_WORDS
    texts = []
    for length in lengths:
        words: list[str] = []
        while len(words) < length:
            words += sentences[rng.integers(len(sentences))]
        texts.append(" ".join(words[:length]))
    return texts


@dataclasses.dataclass(frozen=True)
class SetUp:
    name: str
    precision: str
    pad_to_longest_of_split: bool
    group_by_length: bool
    compile: bool = False
    """``torch.compile`` the model for the training step (two epochs: the first compiles, the second is timed)."""
    optim: str | None = None
    """The Trainer's ``optim`` (None: the stage's, the Trainer's default fused AdamW)."""
    threads: int | None = None
    """Intra-op threads for this set-up alone (None: the run's)."""
    stage_logging: bool = False
    """The stage's per-step work too: loss points and its callbacks (the benchmark's own set-ups log nothing)."""


LEVERS = ("compile", "foreach", "threads=N", "logging")


def lever(base: SetUp, spec: str) -> SetUp:
    """``base`` with the lever ``spec`` (one of ``LEVERS``) switched on, named after it."""
    name = f"{base.name}+{spec}"
    if spec == "compile":
        return dataclasses.replace(base, name=name, compile=True)
    if spec == "foreach":
        return dataclasses.replace(base, name=name, optim="adamw_torch")
    if spec == "logging":
        return dataclasses.replace(base, name=name, stage_logging=True)
    count = spec.removeprefix("threads=")
    if spec.startswith("threads=") and count.isdigit() and int(count) > 0:
        return dataclasses.replace(base, name=name, threads=int(count))
    raise SystemExit(f"error: --levers: expected some of {', '.join(LEVERS)}; got {spec!r}")


@dataclasses.dataclass
class Measured:
    """One training run of a set-up: its rate, its tokens per text and, compiled, what compiling cost."""

    rate: float
    """Texts per clock second over the timed epoch."""
    wall_rate: float
    """Texts per wall second over the timed epoch."""
    padded: float
    compile_seconds: float = 0.0
    """Wall seconds the first (compiling) epoch took beyond the timed one."""


def epoch_clock(clock: Callable[[], float]) -> Any:
    """A TrainerCallback keeping each epoch's seconds on ``clock`` (``seconds``) and on the wall (``wall``)."""
    from transformers import TrainerCallback

    class EpochClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.wall: list[float] = []

        def on_epoch_begin(self, *args: Any, **kwargs: Any) -> None:
            self._start, self._wall = clock(), time.perf_counter()

        def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(clock() - self._start)
            self.wall.append(time.perf_counter() - self._wall)

    return EpochClock()


def loss_sink() -> Any:
    """A TrainerCallback standing for the stage's MLflow metrics callback: it keeps each logged point."""
    from transformers import TrainerCallback

    class LossSink(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs:
                self.points.append({key: float(value) for key, value in logs.items() if isinstance(value, float)})

    return LossSink()


def samples_per_second(
    setup: SetUp, texts: list[str], config: FinetuneConfig, workdir: Path, clock: Callable[[], float]
) -> Measured:
    """One training run of ``setup``: texts per ``clock`` second over its timed epoch (set-up excluded), per wall
    second, the mean padded length of a text, and what compiling cost."""
    import torch
    from transformers import PrinterCallback, set_seed

    from emotion_exp import finetune, models

    resolved = models.resolve(config.model)
    tokenizer = models.load_tokenizer(resolved)
    labels = [i % 6 for i in range(len(texts))]
    if setup.pad_to_longest_of_split:
        encoded = tokenizer(texts, padding="longest", truncation=True, max_length=config.max_length)
        rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": label}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels)
        ]
        padded = float(len(rows[0]["input_ids"]))
    else:
        rows, _ = finetune.examples(texts, labels, tokenizer, config.max_length)
        lengths = sorted(len(row["input_ids"]) for row in rows)
        # Length grouping sorts within mega-batches of 50 batches (one, at the default size), and
        # each batch pads to its longest text: about this many tokens per text.
        padded = sum(
            max(lengths[i : i + config.batch_size]) * len(lengths[i : i + config.batch_size])
            for i in range(0, len(lengths), config.batch_size)
        ) / len(lengths)
    set_seed(config.seed)
    model = finetune.load_classifier(resolved, [str(i) for i in range(6)])
    epochs = 2 if setup.compile else 1
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    stage_args = finetune.training_arguments(
        dataclasses.replace(config, epochs=epochs),
        workdir / setup.name,
        setup.precision,
        steps_per_epoch=steps_per_epoch,
    )
    # The stage's arguments, timing training alone: no evaluation or checkpoint, and no logging unless asked.
    quiet = {"logging_strategy": "no", "logging_first_step": False}
    args = dataclasses.replace(
        stage_args,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
        train_sampling_strategy="group_by_length" if setup.group_by_length else "random",
        disable_tqdm=True,
        torch_compile=setup.compile,
        **({} if setup.stage_logging else quiet),
        **({"optim": setup.optim} if setup.optim else {}),
    )
    epochs_timed = epoch_clock(clock)
    callbacks = [epochs_timed]
    if setup.stage_logging:  # what the stage adds: its throughput callback and a sink for the loss points
        callbacks += [finetune.Stopwatch(), loss_sink()]
    trainer = finetune.make_trainer(model, tokenizer, args, rows, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    threads_before = torch.get_num_threads()
    if setup.threads:
        torch.set_num_threads(setup.threads)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads_before)
    timed = epochs_timed.seconds[-1]
    return Measured(
        rate=len(rows) / timed,
        wall_rate=len(rows) / epochs_timed.wall[-1],
        padded=padded,
        compile_seconds=epochs_timed.wall[0] - epochs_timed.wall[-1] if setup.compile else 0.0,
    )


# Texts fine-tuned by the study's default run (the bundled sample's 1,665 training texts, 3 epochs) and on the
# emotion data (16,000 training texts, 3 epochs): what compiling has to pay back.
RUNS_TO_PAY_BACK = {"the study's default run (1,665 texts x 3 epochs)": 4_995, "the emotion data (16,000 x 3)": 48_000}
# Operators by what they do, for --profile: the first group whose names contain the operator's name counts it.
OPERATOR_GROUPS = {
    "matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn"),
    "optimizer (AdamW)": ("adam",),
    "dropout masks": ("bernoulli",),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::to"),
    "filling tensors": ("aten::fill_", "aten::zero_", "aten::zeros"),
    "gradient norms": ("norm",),
}


def profile_epoch(setup: SetUp, texts: list[str], config: FinetuneConfig, workdir: Path) -> str:
    """Where one epoch's operator time goes (``torch.profiler``, self CPU time), grouped, then the top operators."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        samples_per_second(setup, texts, config, workdir, time.perf_counter)
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    groups = dict.fromkeys([*OPERATOR_GROUPS, "the rest"], 0.0)
    for event in events:
        group = next((g for g, names in OPERATOR_GROUPS.items() if any(n in event.key for n in names)), "the rest")
        groups[group] += event.self_cpu_time_total
    lines = [f"where {setup.name}'s epoch goes (operators' self CPU time, {total / 1e6:.1f} s):"]
    lines += [f"  {group:<20} {share / total:>5.0%}" for group, share in groups.items()]
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:8]
    lines.append("  top operators: " + ", ".join(f"{e.key} {e.self_cpu_time_total / total:.0%}" for e in top))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Encoder to fine-tune.")
    parser.add_argument("--texts", type=int, default=640, help="Texts per training epoch (20 steps of 32).")
    parser.add_argument("--rounds", type=int, default=2, help="Times each set-up is measured; the best counts.")
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    parser.add_argument("--quick", action="store_true", help="CI size: 64 texts in batches of 16, two rounds.")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="One thread, timed in process CPU seconds: ratios that hold on a machine others are using too.",
    )
    parser.add_argument(
        "--levers",
        default="",
        help=f"Comma-separated levers to measure on their own beside ours as it is: {', '.join(LEVERS)}.",
    )
    parser.add_argument("--without-study", action="store_true", help="Leave out the study's set-up (it is slow).")
    parser.add_argument("--profile", action="store_true", help="Also print where one epoch of ours goes, by operator.")
    parser.add_argument("--track", action="store_true", help="Log the results to the current MLflow store.")
    args = parser.parse_args()
    prefer_passive_openmp()  # as the CLI does, before torch loads
    count, rounds, batch_size = (64, 2, 16) if args.quick else (args.texts, args.rounds, args.batch_size)

    import torch

    from emotion_exp import models

    if args.cpu_time:
        torch.set_num_threads(1)
    clock = time.process_time if args.cpu_time else time.perf_counter
    unit = "texts/CPU-s" if args.cpu_time else "texts/s"
    config = FinetuneConfig(model=args.model, batch_size=batch_size, epochs=1)
    native = models.resolve_precision("auto")
    ours = [SetUp("ours_fp32", "fp32", pad_to_longest_of_split=False, group_by_length=True)]
    if native != "fp32":
        ours.append(SetUp(f"ours_{native}", native, pad_to_longest_of_split=False, group_by_length=True))
    study_setup = (
        [] if args.without_study else [SetUp("study", "fp32", pad_to_longest_of_split=True, group_by_length=False)]
    )
    levers = [spec.strip() for spec in args.levers.split(",") if spec.strip()]
    setups = [*study_setup, *ours, *(lever(base, spec) for spec in levers for base in ours)]
    texts = emotion_like_texts(count, config.seed)
    load_before = os.getloadavg()

    best: dict[str, Measured] = {}
    compiling: dict[str, list[float]] = {}  # each round's compile seconds: the first cold, the later ones cached
    with tempfile.TemporaryDirectory(prefix="emotion-bench-finetune-") as folder:
        if "compile" in levers:  # the compiler's on-disk cache: empty, so the first round compiles as on a new machine
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(folder) / "inductor"))
        # A few steps first: the first training in a process pays for loading kernels and libraries.
        samples_per_second(ours[0], texts[: 2 * config.batch_size], config, Path(folder), clock)
        for round_ in range(rounds):
            # Each round starts one set-up later, so no set-up always runs right after the same neighbour.
            for setup in setups[round_ % len(setups) :] + setups[: round_ % len(setups)]:
                measured = samples_per_second(setup, texts, config, Path(folder), clock)
                compiling.setdefault(setup.name, []).append(measured.compile_seconds)
                if setup.name not in best or measured.rate > best[setup.name].rate:
                    best[setup.name] = measured
                print(
                    f"round {round_ + 1}/{rounds} {setup.name:>18}: {measured.rate:7.1f} {unit}",
                    file=sys.stderr,
                    flush=True,
                )
        profiled = profile_epoch(ours[-1], texts, config, Path(folder)) if args.profile else ""
    load_after = os.getloadavg()

    from transformers import AutoConfig

    reference = best["study"].rate if "study" in best else None
    used = torch.get_num_threads()
    machine_peak = peak.matmul_peak(threads.available_cores())
    encoder = AutoConfig.from_pretrained(models.resolve(args.model).location)

    def gflops(name: str) -> float:
        """Training FLOP/s: three forward passes' multiply-adds over the padded tokens of each text."""
        length = best[name].padded
        h, i, layers = encoder.hidden_size, encoder.intermediate_size, encoder.num_hidden_layers
        per_text = 6 * layers * ((4 * h * h + 2 * h * i) * length + 2 * h * length * length)
        return per_text * best[name].rate / 1e9

    print(f"cpu: {models.cpu_description()}; torch threads: {used}")
    print(f"load average (1 min): {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"matmul peak GFLOP/s: {peak.describe(machine_peak)}")
    print(
        f"model: {args.model}; {count} emotion-like texts, batch size {config.batch_size}, one epoch, "
        f"best of {rounds} ({unit})"
    )
    print(f"{'set-up':<50} {'tokens/text':>11} {unit:>11} {'vs study':>8} {'GFLOP/s':>8} {'of peak':>8}")
    descriptions = {
        "study": "study: pad to longest of split, fp32, random",
        **{s.name: f"ours: dynamic padding + length grouping, {s.precision}" for s in ours},
    }
    for setup in setups:
        rate = best[setup.name].rate
        share = peak.share(gflops(setup.name), machine_peak, setup.precision, setup.threads or used)
        versus = f"{rate / reference:>7.2f}x" if reference else f"{'-':>8}"
        print(
            f"{descriptions.get(setup.name, setup.name):<50} {best[setup.name].padded:>11.1f} {rate:>11.1f} {versus}"
            f" {gflops(setup.name):>8.1f} {share:>8.0%}"
        )
    for setup in setups:
        base = setup.name.partition("+")[0]
        if base == setup.name:
            continue
        ratio, wall_ratio = best[setup.name].rate / best[base].rate, best[setup.name].wall_rate / best[base].wall_rate
        print(f"lever {setup.name}: {ratio:.2f}x {base} ({unit}), {wall_ratio:.2f}x in wall time")
        if setup.compile:
            print(f"  {compile_note(best[setup.name], best[base], compiling[setup.name])}")
    if profiled:
        print(profiled)

    if args.track:
        with harness.store(track=True):
            metrics = {f"{name}_samples_per_second": m.rate for name, m in best.items()}
            if reference:
                metrics |= {f"{name}_speedup": m.rate / reference for name, m in best.items() if name != "study"}
            harness.log(
                "finetune",
                {
                    "model": args.model,
                    "texts": count,
                    "batch_size": config.batch_size,
                    "rounds": rounds,
                    "levers": args.levers,
                    "clock": "process CPU, 1 thread" if args.cpu_time else "wall",
                    "cpu": models.cpu_description(),
                },
                metrics,
            )


def compile_note(compiled: Measured, eager: Measured, seconds: list[float]) -> str:
    """What compiling cost (``seconds``: each round's, the first with the compiler's cache as this machine had it)
    and whether the first compile pays back on the study's default run and on the emotion data."""
    cost = f"compiling took {seconds[0]:.0f} s (wall) in the first round (an empty compiler cache)" + (
        f", {min(seconds[1:]):.0f} s in a later one (cached)" if len(seconds) > 1 else ""
    )
    saved_per_text = 1 / eager.wall_rate - 1 / compiled.wall_rate
    if saved_per_text <= 0:
        return f"{cost}; the compiled step is no faster: it never pays back"
    texts = seconds[0] / saved_per_text
    verdicts = "; ".join(f"{run}: {'pays' if n > texts else 'does not pay'}" for run, n in RUNS_TO_PAY_BACK.items())
    return f"{cost}; paid back after {texts:,.0f} texts; {verdicts}"


if __name__ == "__main__":
    main()
