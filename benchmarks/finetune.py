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

    python -m benchmarks.finetune [--quick] [--cpu-time] [--track] [--texts N] [--rounds N] [--model SPEC]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import harness, peak
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


def samples_per_second(
    setup: SetUp, texts: list[str], config: FinetuneConfig, workdir: Path, clock: Callable[[], float]
) -> tuple[float, float]:
    """Texts per ``clock`` second over one training epoch (set-up excluded) and the mean padded length of a text."""
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
    # The stage's arguments, timing one epoch of training alone: no evaluation, checkpoint or logging.
    args = dataclasses.replace(
        finetune.training_arguments(
            config, workdir / setup.name, setup.precision, steps_per_epoch=math.ceil(len(rows) / config.batch_size)
        ),
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
        train_sampling_strategy="group_by_length" if setup.group_by_length else "random",
        logging_strategy="no",
        logging_first_step=False,
        disable_tqdm=True,
    )
    stopwatch = finetune.Stopwatch(clock)
    trainer = finetune.make_trainer(model, tokenizer, args, rows, callbacks=[stopwatch])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return stopwatch.rate(len(rows)), padded


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
    setups = [
        SetUp("study", "fp32", pad_to_longest_of_split=True, group_by_length=False),
        SetUp("ours_fp32", "fp32", pad_to_longest_of_split=False, group_by_length=True),
    ]
    if native != "fp32":
        setups.append(SetUp(f"ours_{native}", native, pad_to_longest_of_split=False, group_by_length=True))
    texts = emotion_like_texts(count, config.seed)

    best: dict[str, float] = {}
    padded: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="emotion-bench-finetune-") as folder:
        for round_ in range(rounds):
            for setup in setups:
                rate, padded[setup.name] = samples_per_second(setup, texts, config, Path(folder), clock)
                best[setup.name] = max(best.get(setup.name, 0.0), rate)
                print(f"round {round_ + 1}/{rounds} {setup.name:>10}: {rate:7.1f} {unit}", file=sys.stderr, flush=True)

    from transformers import AutoConfig

    study = best["study"]
    used = torch.get_num_threads()
    machine_peak = peak.matmul_peak(used)
    encoder = AutoConfig.from_pretrained(models.resolve(args.model).location)

    def gflops(name: str) -> float:
        """Training FLOP/s: three forward passes' multiply-adds over the padded tokens of each text."""
        length = padded[name]
        h, i, layers = encoder.hidden_size, encoder.intermediate_size, encoder.num_hidden_layers
        per_text = 6 * layers * ((4 * h * h + 2 * h * i) * length + 2 * h * length * length)
        return per_text * best[name] / 1e9

    print(f"cpu: {models.cpu_description()}; torch threads: {used}")
    print(f"matmul peak GFLOP/s: {peak.describe(machine_peak)}")
    print(
        f"model: {args.model}; {count} emotion-like texts, batch size {config.batch_size}, one epoch, "
        f"best of {rounds} ({unit})"
    )
    print(f"{'set-up':<46} {'tokens/text':>11} {unit:>11} {'vs study':>8} {'GFLOP/s':>8} {'of peak':>8}")
    descriptions = {
        "study": "study: pad to longest of split, fp32, random",
        "ours_fp32": "ours: dynamic padding + length grouping, fp32",
        f"ours_{native}": f"ours: dynamic padding + length grouping, {native}",
    }
    for setup in setups:
        rate = best[setup.name]
        share = peak.share(gflops(setup.name), machine_peak, setup.precision, used)
        print(
            f"{descriptions[setup.name]:<46} {padded[setup.name]:>11.1f} {rate:>11.1f} {rate / study:>7.2f}x"
            f" {gflops(setup.name):>8.1f} {share:>8.0%}"
        )

    if args.track:
        with harness.store(track=True):
            metrics = {f"{name}_samples_per_second": rate for name, rate in best.items()}
            metrics |= {f"{name}_speedup": rate / study for name, rate in best.items() if name != "study"}
            harness.log(
                "finetune",
                {
                    "model": args.model,
                    "texts": count,
                    "batch_size": config.batch_size,
                    "rounds": rounds,
                    "clock": "process CPU, 1 thread" if args.cpu_time else "wall",
                    "cpu": models.cpu_description(),
                },
                metrics,
            )


if __name__ == "__main__":
    main()
