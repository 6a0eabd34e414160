"""Full fine-tuning with the transformers Trainer: dynamic padding, length grouping, bf16 where native.

This module never imports mlflow: ``train`` takes Trainer callbacks, and the stage passes the
one that logs (``stages.finetune.MlflowMetricsCallback``). Checkpoints go to one folder per run, each epoch
and when the user interrupts (Ctrl-C or SIGTERM finish the current step, save, then stop), so
an interrupted run continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import seed_worker

from emotion_exp import batching, console, distributed, engine, inference, interrupts, metrics, models
from emotion_exp.errors import UserError

if TYPE_CHECKING:
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

    from emotion_exp.config import FinetuneConfig
    from emotion_exp.data import DatasetSplits

MODEL_FOLDER = "model"
# The metric that early stopping (and the best checkpoint it reloads) goes by.
BEST_METRIC = "eval_f1_weighted"
# About this many training-loss points per epoch.
LOSS_POINTS_PER_EPOCH = 20


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at the user's request after saving ``checkpoint``."""

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__(f"training interrupted; last checkpoint: {checkpoint}")
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class FinetuneResult:
    """What the stage logs: the saved model, scores' inputs and how fast training went."""

    model_dir: Path
    """The fine-tuned model and its tokenizer, written by ``save_pretrained``."""
    logits: dict[str, np.ndarray]
    """Class logits per split (``validation``, ``test``), rows in the split's order (the stage calibrates on them)."""
    validation_embeddings: np.ndarray
    """The fine-tuned encoder's [CLS] last hidden state of every validation text."""
    precision: str
    train_seconds: float
    """Wall time of the Trainer's ``train`` in this process (evaluation and saving included)."""
    train_samples_per_second: float
    """Training texts per second over the training epochs alone (no evaluation, no saving)."""
    global_step: int
    truncated: dict[str, int]
    """Texts per split that ``max_length`` cut."""
    threads: int
    """The intra-op thread count it trained and predicted on (``engine.for_training``)."""


def last_checkpoint(folder: str | Path) -> str | None:
    """The newest complete ``checkpoint-<step>`` folder in ``folder``, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it was cut short
    (the process was killed while saving) and cannot be resumed from.
    """
    complete = [
        path
        for path in Path(folder).glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit() and (path / TRAINER_STATE_NAME).is_file()
    ]
    return str(max(complete, key=lambda path: int(path.name.removeprefix("checkpoint-")))) if complete else None


def load_classifier(resolved: models.ResolvedModel, label_names: Sequence[str]) -> PreTrainedModel:
    """The encoder with a fresh classification head whose labels are ``label_names``.

    Says so once in plain words; transformers' own report lists the head's weights as MISSING.
    """
    console.say(
        f"finetune: starting from {resolved.spec} with a new, randomly initialised classification head for "
        f"{len(label_names)} labels (fine-tuning trains it)."
    )
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            resolved.location,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: index for index, name in enumerate(label_names)},
        )
    except (OSError, ValueError) as error:
        raise UserError(
            f"Model {resolved.spec!r} ({resolved.location}) could not be loaded as a sequence classifier: "
            f"{error}. Pass an encoder folder written by save_pretrained or a hub id of an encoder."
        ) from error


def examples(
    texts: Sequence[str], labels: Sequence[int], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[dict[str, Any]], int]:
    """Unpadded token ids with labels (the collator pads per batch), and how many texts were cut."""
    tokenized = batching.tokenize(texts, tokenizer, max_length)
    rows = [{"input_ids": ids, "labels": int(label)} for ids, label in zip(tokenized.input_ids, labels)]
    return rows, tokenized.truncated


def training_arguments(
    config: FinetuneConfig,
    output_dir: str | Path,
    precision: str,
    *,
    steps_per_epoch: int,
) -> TrainingArguments:
    """Our set-up: linear warm-up then decay, length-grouped batches, eval and a checkpoint each epoch.

    Under torchrun ``batch_size`` stays the batch of one optimizer step, split over the
    processes, so N processes take the same steps as one. DDP settings are set only then.
    """
    early_stopping = config.early_stopping_patience > 0
    processes = distributed.world_size()
    if config.batch_size % processes:
        raise UserError(
            f"--batch_size {config.batch_size} is the batch of one step, split over the {processes} processes "
            f"torchrun started; pass a multiple of {processes}."
        )
    ddp = {"ddp_backend": distributed.backend(), "ddp_find_unused_parameters": False} if processes > 1 else {}
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size // processes,
        per_device_eval_batch_size=config.batch_size,
        # The default averages the token count over processes, which doubles the logged loss and
        # gradient norm of sequence classification under DDP.
        average_tokens_across_devices=False,
        **ddp,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=float(config.warmup),
        lr_scheduler_type="linear",
        seed=config.seed,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=early_stopping,
        metric_for_best_model=BEST_METRIC if early_stopping else None,
        logging_strategy="steps",
        logging_steps=max(1, round(steps_per_epoch / LOSS_POINTS_PER_EPOCH)),
        logging_first_step=True,
        report_to="none",
        # "passive" keeps the verbosity the console chose: any other level is set on transformers'
        # logger for the whole process, and the next model loaded printed its weight report.
        log_level="passive",
        disable_tqdm=False,
    )


def _compute_metrics(label_names: Sequence[str]):
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        scores = metrics.evaluate(prediction.label_ids, np.argmax(prediction.predictions, axis=-1), label_names)
        return {"accuracy": scores.accuracy, "f1_weighted": scores.f1_weighted}

    return compute


class Stopwatch(TrainerCallback):
    """Seconds spent inside training epochs and the share of an epoch they covered.

    The Trainer's own samples/s includes evaluation and checkpointing; this counts training alone.
    ``clock`` may be ``time.process_time`` to measure CPU time on a machine others share.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds = 0.0
        self.epochs = 0.0
        self._started = 0.0
        self._epoch = 0.0

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = self.clock()
        self._epoch = state.epoch or 0.0

    def on_epoch_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds += self.clock() - self._started
        self.epochs += (state.epoch or 0.0) - self._epoch

    def rate(self, texts_per_epoch: int) -> float:
        """Training texts per clock second over the epochs measured (0 before any)."""
        return self.epochs * texts_per_epoch / self.seconds if self.seconds else 0.0


def _any_process(flag: bool) -> bool:
    """``flag`` or-ed over every process of a torchrun job; ``flag`` itself in a single process."""
    if distributed.world_size() == 1:
        return flag
    vote = torch.tensor([int(flag)])
    torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
    return bool(vote.item())


class _StopOnRequest(TrainerCallback):
    """After a stop request: save a checkpoint at the end of the current step and stop training.

    ``requested`` is this process's request (the signal handler sets it); ``stopping`` what every
    process agreed after the step, so that all stop after the same one (in DDP the others would
    wait forever). A request that lands after a step's vote counts at the next step: it is never
    overwritten by the vote. The epoch-end evaluation and save that would follow the stop are
    skipped: the step's checkpoint already holds everything a resume needs.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopping = False

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        self.stopping = _any_process(self.requested)
        if self.stopping:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stopping:
            control.should_evaluate = False
            control.should_save = False
        return control


@contextlib.contextmanager
def _stop_requests(stopper: _StopOnRequest) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into a checkpointed stop; a second Ctrl-C stops at once.

    SIGTERM never aborts at once: ``mlflow run`` answers Ctrl-C by sending it to the entry point
    and waits for it to exit. Under torchrun a Ctrl-C reaches each process twice (from the
    terminal and from torchrun), so there only torchrun's own timeout stops at once.
    """
    single = distributed.world_size() == 1

    def request(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and stopper.requested and single:
            interrupts.raise_when_safe(KeyboardInterrupt(), frame)
            return
        if not stopper.requested:
            print(
                "\nStopping: saving a checkpoint after this step"
                + (" (Ctrl-C again to stop at once)." if single else "."),
                file=sys.stderr,
                flush=True,
            )
        stopper.requested = True

    with interrupts.handling(request):
        yield


class EpochSeededLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Length-grouped order (transformers' ``get_length_grouped_indices``) drawn from ``seed + epoch``.

    transformers' own sampler draws from the global RNG, so an epoch resumed mid-way would skip the
    first batches of a different order (some texts twice, some never); seeded per epoch, the
    resumed epoch replays its order, and every process of a distributed run draws the same one.
    The Trainer sets the epoch before each pass (``set_epoch``, through accelerate's data loader).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class _Trainer(Trainer):
    """The Trainer, its training batches in a length-grouped order seeded per epoch."""

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's documented hook for the training batches, with ``EpochSeededLengthGroupedSampler``.

        The loader is built with the Trainer's own data-loader settings and prepared by its
        accelerator, as the Trainer builds its own (which is what shards it under DDP).
        """
        args = self.args
        sampler = EpochSeededLengthGroupedSampler(
            [len(row["input_ids"]) for row in self.train_dataset],
            args.train_batch_size * args.gradient_accumulation_steps,
            args.seed,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_size=args.train_batch_size,
            sampler=sampler,
            collate_fn=self.data_collator,
            drop_last=args.dataloader_drop_last,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            worker_init_fn=functools.partial(
                seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index
            ),
        )
        return self.accelerator.prepare(loader)


def make_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: TrainingArguments,
    train_rows: list[dict[str, Any]],
    *,
    eval_rows: list[dict[str, Any]] | None = None,
    label_names: Sequence[str] = (),
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """A Trainer that pads each batch to its longest text and scores accuracy and weighted F1.

    Its progress bar is ours
    (``console.trainer_progress``): a line per evaluation, not raw log dictionaries.
    """
    collator = DataCollatorWithPadding(tokenizer)
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=_compute_metrics(label_names) if eval_rows is not None else None,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(console.trainer_progress())
    return trainer


@dataclass(frozen=True)
class Prepared:
    """The tokenizer, the classifier with its fresh head, and the tokenized train and validation rows."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    truncated_train: int


def resume_point(checkpoint_dir: Path, resume: bool) -> str | None:
    """The checkpoint to continue from (None for a new run); a clear error when there is none to resume."""
    if not resume:
        return None
    found = last_checkpoint(checkpoint_dir)
    if found is None:
        raise UserError(
            f"No checkpoint to resume from in {checkpoint_dir}: expected a checkpoint-<step> folder there. "
            "Check --output_dir, or start a new run without --resume."
        )
    return found


def prepare(splits: DatasetSplits, resolved: models.ResolvedModel, config: FinetuneConfig) -> Prepared:
    """Load the tokenizer and the classifier (head seeded by ``config.seed``), tokenize train and validation."""
    tokenizer = models.load_tokenizer(resolved)
    set_seed(config.seed)  # the new classification head's initial weights
    model = load_classifier(resolved, splits.label_names)
    train_rows, train_cut = examples(splits.train["text"], splits.train["label"], tokenizer, config.max_length)
    eval_rows, _ = examples(splits.validation["text"], splits.validation["label"], tokenizer, config.max_length)
    # Evaluation order does not change the scores; sorted by length it pads least.
    eval_rows.sort(key=lambda row: len(row["input_ids"]))
    return Prepared(tokenizer, model, train_rows, eval_rows, train_cut)


def fit(trainer: Trainer, stopper: _StopOnRequest, resume_from: str | None) -> float:
    """Run the Trainer with Ctrl-C and SIGTERM turned into a checkpointed stop; return its wall seconds.

    Raises ``TrainingInterrupted`` after that checkpoint when the user stopped training.
    """
    started = time.perf_counter()
    with _stop_requests(stopper):
        trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    # Every process ends the same way; a request after the last step's vote still counts (a later
    # signal goes to the stage's own handler).
    if _any_process(stopper.requested):
        raise TrainingInterrupted(last_checkpoint(trainer.args.output_dir))
    return seconds


def save_and_release(trainer: Trainer, model_dir: Path) -> tuple[PreTrainedModel, int]:
    """Save the model and tokenizer to ``model_dir``, then free the optimizer state (twice the weights)
    before predicting; return the model in eval mode and the optimizer steps taken.

    Every reference to the optimizer goes, so it is freed at once: the Trainer's, its callback
    handler's (set by ``train``; kept, it held the state alive to the end of the stage) and the
    accelerator's (``free_memory``).
    """
    trainer.save_model(str(model_dir))
    model, global_step = trainer.model.eval(), trainer.state.global_step
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.callback_handler.optimizer = trainer.callback_handler.lr_scheduler = None
    trainer.accelerator.free_memory()
    return model, global_step


def predict_splits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: DatasetSplits,
    config: FinetuneConfig,
    precision: str,
    names: Sequence[str] = ("validation", "test"),
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """Class logits of the ``names`` splits, the validation [CLS] states, and texts cut per split."""
    logits: dict[str, np.ndarray] = {}
    truncated: dict[str, int] = {}
    embeddings = np.empty((0, 0), dtype=np.float32)
    for split in names:
        outputs = inference.run(
            model,
            tokenizer,
            splits.split(split)["text"].tolist(),
            max_length=config.max_length,
            batch_size=config.batch_size,
            precision=precision,
            logits=True,
            pooling="cls" if split == "validation" else None,
        )
        logits[split], truncated[split] = outputs.logits, outputs.truncated
        if split == "validation":
            embeddings = outputs.pooled
    return logits, embeddings, truncated


def train(
    splits: DatasetSplits,
    resolved: models.ResolvedModel,
    config: FinetuneConfig,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    checkpoint_dir: str | Path,
    resume: bool = False,
    scored_splits: Sequence[str] = ("validation", "test"),
) -> FinetuneResult:
    """Fine-tune on train, evaluate on validation each epoch, then predict ``scored_splits``.

    ``resume`` continues from the newest checkpoint in ``checkpoint_dir``. Raises
    ``TrainingInterrupted`` after saving a checkpoint when the user stops training.
    """
    checkpoint_dir = Path(checkpoint_dir)
    resume_from = resume_point(checkpoint_dir, resume)
    chosen = engine.for_training(config.precision, config.threads)  # under torchrun, auto keeps its OMP_NUM_THREADS
    precision = chosen.precision
    prepared = prepare(splits, resolved, config)
    steps_per_epoch = math.ceil(len(prepared.train_rows) / config.batch_size)
    args = training_arguments(config, checkpoint_dir, precision, steps_per_epoch=steps_per_epoch)
    stopwatch, stopper = Stopwatch(), _StopOnRequest()
    extra = [EarlyStoppingCallback(config.early_stopping_patience)] if config.early_stopping_patience > 0 else []
    trainer = make_trainer(
        prepared.model,
        prepared.tokenizer,
        args,
        prepared.train_rows,
        eval_rows=prepared.eval_rows,
        label_names=splits.label_names,
        callbacks=[*callbacks, *extra, stopwatch, stopper],
    )
    train_seconds = fit(trainer, stopper, resume_from)
    model_dir = checkpoint_dir / MODEL_FOLDER
    model, global_step = save_and_release(trainer, model_dir)
    logits, embeddings, truncated = predict_splits(model, prepared.tokenizer, splits, config, precision, scored_splits)
    return FinetuneResult(
        model_dir=model_dir,
        logits=logits,
        validation_embeddings=embeddings,
        precision=precision,
        train_seconds=train_seconds,
        train_samples_per_second=stopwatch.rate(len(prepared.train_rows)),
        global_step=global_step,
        truncated={"train": prepared.truncated_train, **truncated},
        threads=chosen.threads,
    )
