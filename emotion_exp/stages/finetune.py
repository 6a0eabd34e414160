"""The finetune stage: fine-tune the encoder end to end, log everything into one run, register the model.

Ctrl-C saves a checkpoint and ends the run KILLED; ``--resume RUN_ID`` continues it from that
checkpoint into the same run, with the same parameters and data.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from transformers import TrainerCallback

from emotion_exp import (
    analysis,
    console,
    data,
    distributed,
    finetune,
    model_card,
    models,
    plots,
    pyfunc,
    registry,
    tracking,
)
from emotion_exp.config import FOLLOW_THE_DATA, DataConfig, FinetuneConfig, PromoteConfig, subset
from emotion_exp.errors import UserError
from emotion_exp.stages import seeds
from emotion_exp.stages.skeleton import SPLIT_PREFIX, LoggedModel, Stage, log_figure, log_model_source, open_stage

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits

# Parameters that may differ on resume: they do not change what is trained.
FREE_ON_RESUME = ("resume", "output_dir", "umap_max_points", "registered_model", "nproc_per_node")


def run(
    config: FinetuneConfig,
    *,
    splits: DatasetSplits | None = None,
    train_rows: Sequence[int] | None = None,
    score_test: bool = True,
    labels: tracking.RunLabels | None = None,
    callbacks: Sequence[Any] = (),
) -> str:
    """Fine-tune, evaluate, log and register; return the run id.

    The arguments are every model stage's (``catalog.StageRun``; ``score_test=False`` neither
    predicts nor scores the test split), and ``callbacks``: extra transformers ``TrainerCallback``
    objects (a sweep's pruning, tests). Under torchrun only rank 0 opens the run and logs; the
    other ranks train beside it (``_follow``).
    """
    if seeds.repeated(config):
        register = None if config.registered_model != FOLLOW_THE_DATA else registered_if_best
        return seeds.run(
            "finetune",
            config,
            run,
            splits=splits,
            train_rows=train_rows,
            score_test=score_test,
            register=register,
            labels=labels,
        )
    if train_rows is not None and config.nproc_per_node > 1:
        raise UserError(
            f"finetune on a subset of the training rows trains in one process; got --nproc_per_node "
            f"{config.nproc_per_node}. Pass --nproc_per_node 1."
        )
    if config.nproc_per_node > 1 and distributed.world_size() == 1:
        return _launch(config)
    distributed.init()
    if not distributed.is_main():
        return _follow(config, callbacks)
    with distributed.announcing() as announce:
        return _lead(config, splits, callbacks, announce, train_rows=train_rows, score_test=score_test, labels=labels)


def _lead(
    config: FinetuneConfig,
    splits: DatasetSplits | None,
    callbacks: Sequence[Any],
    announce: Callable[[str], None],
    *,
    train_rows: Sequence[int] | None,
    score_test: bool,
    labels: tracking.RunLabels | None = None,
) -> str:
    """Rank 0 (or the only process): open the run, announce its id, train, log and register."""
    if config.resume:
        splits = _check_resume(config)
    resume = config.resume or None
    with open_stage("finetune", config, splits=splits, train_rows=train_rows, run_id=resume, labels=labels) as stage:
        announce(stage.run_id)
        tracking.log_params({"world_size": distributed.world_size()})
        checkpoint_dir = Path(config.output_dir) / stage.run_id
        if config.resume:
            mlflow.set_tag("resumed_from", finetune.last_checkpoint(checkpoint_dir))
        registered = stage.registered_name(config.registered_model)
        if registered:  # refuse a registered model of other labels before training, not after
            registry.check_labels(registered, stage.splits.label_names)
        resolved = models.resolve(config.model)
        log_model_source(resolved)
        try:
            result = finetune.train(
                stage.splits,
                resolved,
                config,
                callbacks=[MlflowMetricsCallback(stage.run_id), *callbacks],
                checkpoint_dir=checkpoint_dir,
                resume=bool(config.resume),
                scored_splits=("validation", "test") if score_test else ("validation",),
            )
        except KeyboardInterrupt:
            print(_resume_hint(stage.run_id, checkpoint_dir), file=sys.stderr, flush=True)
            raise
        asked = config.registered_model != FOLLOW_THE_DATA  # the default registers only a new best version
        log_result(stage, dataclasses.replace(config, registered_model=registered), resolved, result, asked=asked)
        # A finished run cannot be resumed, and MLflow now holds its model: the folder is dead weight.
        shutil.rmtree(checkpoint_dir)
        return stage.run_id


def _launch(config: FinetuneConfig) -> str:
    """``--nproc_per_node N`` in one process: run this stage under torchrun with the same parameters.

    Rank 0 writes its run id to a file this process reads back. Ctrl-C reaches torchrun and its
    workers too (they checkpoint and stop); SIGTERM (``mlflow run`` stopping) is passed on to torchrun.
    """
    if mlflow.active_run() is not None:
        raise UserError(
            f"--nproc_per_node {config.nproc_per_node} starts finetune under torchrun as a run of its own; inside "
            "another run (a study, sweep or learning curve) finetune trains in one process: pass --nproc_per_node 1."
        )
    options = [f"--{name}={value}" for name, value in dataclasses.asdict(config).items()]
    with tempfile.TemporaryDirectory(prefix="emotion-exp-torchrun-") as folder:
        run_id_file = Path(folder) / "run_id"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={config.nproc_per_node}", "-m", "emotion_exp", "finetune", *options,
        ]  # fmt: skip
        env = {**os.environ, distributed.RUN_ID_FILE: str(run_id_file)}
        # torchrun sets 1 where it is unset, with a banner the user cannot act on; --threads auto keeps it.
        env.setdefault("OMP_NUM_THREADS", "1")
        with subprocess.Popen(command, env=env) as process:
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
            try:
                while True:
                    try:
                        returncode = process.wait()
                        break
                    except KeyboardInterrupt:
                        continue  # torchrun and its workers got the same Ctrl-C: wait for their checkpoint
            finally:
                signal.signal(signal.SIGTERM, previous)
        if returncode:
            raise SystemExit(returncode)
        return run_id_file.read_text()


def _follow(config: FinetuneConfig, callbacks: Sequence[Any]) -> str:
    """A rank other than 0: train into rank 0's checkpoint folder; touch no MLflow store, write nothing else."""
    run_id = distributed.announced_run_id()
    finetune.train(
        data.load_splits(subset(config, DataConfig)),
        models.resolve(config.model),
        config,
        callbacks=callbacks,
        checkpoint_dir=Path(config.output_dir) / run_id,
        resume=bool(config.resume),
        scored_splits=(),  # rank 0 scores the splits and logs them; the same model here would repeat it
    )
    return run_id


def log_result(
    stage: Stage,
    config: FinetuneConfig,
    resolved: models.ResolvedModel,
    result: finetune.FinetuneResult,
    *,
    asked: bool = True,
) -> None:
    """Scores, plots, throughput, the pyfunc model with its card, and its registered version.

    ``config.registered_model`` is the resolved name ('' = do not register), not ``auto``; unless
    the user ``asked`` for it by name, the model is registered only where it beats the champion.
    """
    splits = stage.splits
    tracking.log_params({"resolved_precision": result.precision})
    mlflow.set_tags({"threads_used": str(result.threads)})
    temperature = calibrate(result.logits, splits) if config.calibrate else 1.0
    evaluations = stage.score(
        lambda split: analysis.scaled_probabilities(result.logits[split], temperature),
        score_test="test" in result.logits,
    )
    mlflow.log_metrics(
        {
            "train_seconds": result.train_seconds,
            "train_samples_per_second": result.train_samples_per_second,
            **{f"truncated_{SPLIT_PREFIX[s]}": n for s, n in result.truncated.items()},
        }
    )
    embedding, labels = plots.umap_embedding(
        result.validation_embeddings,
        splits.validation["label"].to_numpy(),
        seed=config.seed,
        max_points=config.umap_max_points,
    )
    log_figure(
        plots.umap_overlay(embedding, labels, splits.label_names, title="UMAP of the fine-tuned model (validation)"),
        "plots/umap_finetuned_overlay.png",
    )
    log_figure(plots.umap_per_label(embedding, labels, splits.label_names), "plots/umap_finetuned_per_label.png")

    card = model_card.finetuned(config, splits, resolved, result, evaluations)
    (result.model_dir / "README.md").write_text(card)
    mlflow.log_text(card, "model_card.md")
    model = LoggedModel(
        pyfunc.TransformerClassifier(
            # The precision as asked: fp32 stays fp32 everywhere; auto resolves on the machine that loads the model.
            max_length=config.max_length,
            batch_size=config.batch_size,
            precision=config.precision,
            temperature=temperature,
        ),
        # The torch weights, and the ONNX export with tokenizer.json that serves where torch is not installed.
        artifacts=pyfunc.TransformerClassifier.serving_artifacts(result.model_dir),
        packages=("torch", "transformers", "onnxruntime"),  # onnxruntime: the export runs where bf16 is not native
    )
    registered_model = config.registered_model
    if registered_model and not asked:
        registered_model = registered_if_best(registered_model, stage)
    stage.log_model(model, registered_model=registered_model, description=card)
    if not config.registered_model:
        stage.note_unregistered()


def registered_if_best(name: str, stage: Stage) -> str:
    """``name`` where this run would be the best version of it (no champion, or a better one on the same data), else ''.

    A fine-tune run without ``--registered_model`` used to register every model, however weak,
    as a new version of the data's model; now it says which way it went and how to register anyway.
    """
    metric = PromoteConfig().metric
    score = mlflow.get_run(stage.run_id).data.metrics[metric]
    current = registry.champion(name, metric)
    if current is None:
        console.say(f"finetune: {name!r} has no champion yet ({metric} {score:.4f}): registering it.")
        return name
    best = current.value if current.value is not None else float("-inf")
    if current.digest == stage.splits.digest and score > best:
        console.say(
            f"finetune: {metric} {score:.4f} beats the champion of {name!r} (version {current.version}): registering."
        )
        return name
    if current.digest != stage.splits.digest:
        why = f"its champion (version {current.version}) was trained on other data, so the two cannot be compared"
    else:
        why = f"{metric} {score:.4f} does not beat its champion's {best:.4f} (version {current.version})"
    console.say(f"finetune: not registered in {name!r}: {why}. Pass --registered_model {name} to register it anyway.")
    return ""


def calibrate(logits: dict[str, np.ndarray], splits: DatasetSplits) -> float:
    """Fit the temperature on validation; log it and the ECE the model had without it; return it.

    The validation scores logged afterwards are of the calibrated model, and fitted on that
    split, so they flatter it a little; ``test_ece`` against ``test_ece_uncalibrated`` is the
    honest check.
    """
    fit = analysis.fit_temperature(logits["validation"], splits.validation["label"].to_numpy())
    uncalibrated = {
        f"{SPLIT_PREFIX[split]}_ece_uncalibrated": analysis.expected_calibration_error(
            splits.split(split)["label"].to_numpy(), analysis.scaled_probabilities(logits[split])
        )
        for split in logits
    }
    mlflow.log_metrics({"temperature": fit.temperature, **uncalibrated})
    return fit.temperature


def _check_resume(config: FinetuneConfig) -> DatasetSplits:
    """Refuse a resume that cannot continue the run as it was; return the run's data splits."""
    record = tracking.find_run(config.resume)
    if record is None:
        raise UserError(
            f"--resume {config.resume}: no such run in the MLflow store {mlflow.get_tracking_uri()}. "
            "Pass the id of an interrupted finetune run (printed when it stopped) with the same MLFLOW_TRACKING_URI."
        )
    if record.tags.get("stage") != "finetune":
        raise UserError(
            f"--resume {config.resume}: that run is a {record.tags.get('stage', 'non-stage')!r} run, "
            "not a finetune run."
        )
    if record.status == "FINISHED":
        raise UserError(f"--resume {config.resume}: that run already FINISHED; start a new run without --resume.")
    state, detail = tracking.process_state(record.tags)
    if record.status == "RUNNING" and state == tracking.ALIVE:
        raise UserError(
            f"--resume {config.resume}: that run is still RUNNING and its {detail}; two processes would train "
            "into one run. Stop it first (Ctrl-C saves a checkpoint), then resume."
        )
    launcher = tracking.launcher_run_id()
    if launcher and launcher != config.resume:
        raise UserError(
            f"-P resume={config.resume} needs `mlflow run` to reopen that run: add --run-id {config.resume}."
        )
    folder = Path(config.output_dir) / config.resume
    if finetune.last_checkpoint(folder) is None:
        raise UserError(
            f"--resume {config.resume}: no checkpoint-<step> folder in {folder}; the run stopped before its first "
            "checkpoint (or --output_dir differs from that run's). Start a new run without --resume."
        )
    changed = [
        f"--{name} was {record.params[name]}, now {value}"
        for name, value in dataclasses.asdict(config).items()
        if name not in FREE_ON_RESUME and name in record.params and not _same(record.params[name], value)
    ]
    if changed:
        raise UserError(
            f"--resume {config.resume} continues that run with its own parameters; pass them unchanged ("
            + "; ".join(changed)
            + ")."
        )
    splits = data.load_splits(subset(config, DataConfig))
    if record.tags.get("dataset_digest") not in (None, splits.digest):
        raise UserError(
            f"--resume {config.resume}: the data changed since that run started (dataset digest "
            f"{record.tags['dataset_digest'][:12]}, now {splits.digest[:12]}); restore it or start a new run."
        )
    return splits


def _same(logged: str, value: Any) -> bool:
    """Whether a logged param means ``value`` (``mlflow run`` logs numbers as typed, e.g. 1e-4)."""
    text = str(value)
    if logged == text or (logged == '""' and text == ""):
        return True
    try:
        return np.isclose(float(logged), float(value), rtol=1e-9, atol=0.0)
    except (TypeError, ValueError):
        return False


def _resume_hint(run_id: str, checkpoint_dir: Path) -> str:
    checkpoint = finetune.last_checkpoint(checkpoint_dir)
    if checkpoint is None:
        return f"\nInterrupted before the first checkpoint; run {run_id} cannot be resumed. Start a new run."
    return (
        f"\nInterrupted. Checkpoint: {checkpoint}\n"
        f"Continue this run with the same options:\n"
        f"  emotion-exp finetune --resume {run_id} ...\n"
        f"  mlflow run . -e finetune --run-id {run_id} -P resume={run_id} ..."
    )


# The Trainer's log keys and the metric names they are logged under.
TRAINER_METRICS = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "eval_accuracy": "eval_accuracy",
    "eval_f1_weighted": "eval_f1_weighted",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
}


class MlflowMetricsCallback(TrainerCallback):
    """A Trainer callback that logs training loss and per-epoch evaluation into ``run_id``.

    Metrics go to the run by id with the Trainer's global step, so nothing here can start a
    run (transformers' own MLflow callback opens stray runs; ``report_to="none"`` keeps it off),
    and only the main process logs, so the same code can run under ``torchrun``. The Trainer's
    closing summary (its ``train_loss`` is an average) is left out: the stage logs throughput.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        metrics = {
            TRAINER_METRICS[key]: float(value)
            for key, value in logs.items()
            if key in TRAINER_METRICS and isinstance(value, (int, float))
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step, run_id=self.run_id)
