"""The finetune stage: fine-tune the encoder end to end, log everything into one run, register the model.

Ctrl-C saves a checkpoint and ends the run KILLED; ``--resume RUN_ID`` continues it from that
checkpoint into the same run, with the same parameters and data.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from emotion_exp import data, finetune, metrics, models, plots, pyfunc, registry, tracking
from emotion_exp.config import DataConfig, FinetuneConfig, subset
from emotion_exp.errors import UserError
from emotion_exp.stages import clean_stale

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits
    from emotion_exp.metrics import Evaluation

# Parameters that may differ on resume: they do not change what is trained.
FREE_ON_RESUME = ("resume", "output_dir", "umap_max_points", "registered_model")


def run(config: FinetuneConfig, *, callbacks: Sequence[Any] = ()) -> str:
    """Fine-tune, evaluate, log and register; return the run id.

    ``callbacks`` are extra transformers ``TrainerCallback`` objects (tests, notebooks).
    """
    splits = _check_resume(config) if config.resume else None
    with tracking.stage_run("finetune", config, run_id=config.resume or None) as run:
        run_id = run.info.run_id
        checkpoint_dir = Path(config.output_dir) / run_id
        if splits is None:
            splits = data.load_splits(subset(config, DataConfig))
            tracking.log_dataset(splits)
        else:
            tracking.set_tags({"resumed_from": finetune.last_checkpoint(checkpoint_dir)})
        tracking.log_figure(
            plots.label_distribution(splits.train["label"], splits.label_names), "plots/label_distribution.png"
        )
        resolved = models.resolve(config.model)
        tracking.log_model_source(resolved)
        try:
            result = finetune.train(
                splits,
                resolved,
                config,
                callbacks=[tracking.trainer_callback(run_id), *callbacks],
                checkpoint_dir=checkpoint_dir,
                resume=bool(config.resume),
            )
        except KeyboardInterrupt:
            print(_resume_hint(run_id, checkpoint_dir), file=sys.stderr, flush=True)
            raise
        log_result(config, splits, resolved, result)
        # A finished run cannot be resumed, and MLflow now holds its model: the folder is dead weight.
        shutil.rmtree(checkpoint_dir)
        return run_id


def log_result(
    config: FinetuneConfig, splits: DatasetSplits, resolved: models.ResolvedModel, result: finetune.FinetuneResult
) -> None:
    """Scores, plots, throughput, the pyfunc model with its card, and its registered version."""
    tracking.log_params({"resolved_precision": result.precision})
    evaluations = {}
    for split in ("validation", "test"):
        predicted = result.probabilities[split].argmax(axis=1)
        evaluations[split] = metrics.evaluate(splits.split(split)["label"], predicted, splits.label_names)
        tracking.log_evaluation(split, evaluations[split], splits.label_names)
    tracking.log_metrics(
        {
            "train_seconds": result.train_seconds,
            "train_samples_per_second": result.train_samples_per_second,
            **{f"truncated_{tracking.SPLIT_PREFIX[s]}": n for s, n in result.truncated.items()},
        }
    )
    embedding, labels = plots.umap_embedding(
        result.validation_embeddings,
        splits.validation["label"].to_numpy(),
        seed=config.seed,
        max_points=config.umap_max_points,
    )
    tracking.log_figure(
        plots.umap_overlay(embedding, labels, splits.label_names, title="UMAP of the fine-tuned model (validation)"),
        "plots/umap_finetuned_overlay.png",
    )
    tracking.log_figure(plots.umap_per_label(embedding, labels, splits.label_names), "plots/umap_finetuned_per_label.png")

    card = model_card(config, splits, resolved, result, evaluations)
    (result.model_dir / "README.md").write_text(card)
    tracking.log_text(card, "model_card.md")
    model_uri = pyfunc.log_model(
        pyfunc.TransformerClassifier(max_length=config.max_length, batch_size=config.batch_size),
        splits.label_names,
        artifacts={pyfunc.TransformerClassifier.ARTIFACT: str(result.model_dir)},
        packages=("torch", "transformers"),
    )
    if config.registered_model:
        version = registry.register(model_uri, config.registered_model)
        registry.describe_version(
            config.registered_model, version, card, {"stage": "finetune", "dataset_digest": splits.digest}, overwrite=True
        )
        tracking.set_tags({"registered_model": config.registered_model, "registered_version": version})


def model_card(
    config: FinetuneConfig,
    splits: DatasetSplits,
    resolved: models.ResolvedModel,
    result: finetune.FinetuneResult,
    evaluations: dict[str, Evaluation],
) -> str:
    """A markdown model card: what the model is, what it was trained on, how, and how well it does."""
    rows = " / ".join(f"{len(splits.split(s)):,}" for s in ("train", "validation", "test"))
    scores = "\n".join(
        f"| {split} | {e.accuracy:.4f} | {e.f1_weighted:.4f} | {e.f1_macro:.4f} |" for split, e in evaluations.items()
    )
    return f"""# Emotion classifier: fine-tuned {resolved.spec}

Classifies an English text into one of {len(splits.label_names)} labels: {", ".join(splits.label_names)}.
Input: a DataFrame with a `text` column, or a list of strings. Output: `label` and one
`{pyfunc.probability_column("<label>")}` column per label.

## Data
- Dataset: {splits.name} (source: {splits.source}); digest `{splits.digest}`
- Rows train / validation / test: {rows}

## Training
- Base model: {resolved.spec} ({resolved.source}: {resolved.location})
- Epochs {config.epochs:g}, batch size {config.batch_size}, learning rate {config.learning_rate:g} (AdamW,
  {config.warmup:g} of the steps linear warm-up, then linear decay), weight decay {config.weight_decay:g},
  max length {config.max_length}, seed {config.seed}, precision {result.precision}
- Dynamic padding with length-grouped batches; {result.global_step} optimizer steps,
  {result.train_seconds:.0f} s of training at {result.train_samples_per_second:.1f} texts/s on
  {models.cpu_description()}

## Scores
| split | accuracy | weighted F1 | macro F1 |
|---|---|---|---|
{scores}

## Use
```python
import mlflow
model = mlflow.pyfunc.load_model("models:/{config.registered_model or "<name>"}/<version>")
model.predict(["i feel so happy today"])
```
"""


def _check_resume(config: FinetuneConfig) -> DatasetSplits:
    """Refuse a resume that cannot continue the run as it was; return the run's data splits."""
    record = tracking.find_run(config.resume)
    if record is None:
        raise UserError(
            f"--resume {config.resume}: no such run in the MLflow store {tracking.tracking_uri()}. "
            "Pass the id of an interrupted finetune run (printed when it stopped) with the same MLFLOW_TRACKING_URI."
        )
    if record.tags.get("stage") != "finetune":
        raise UserError(
            f"--resume {config.resume}: that run is a {record.tags.get('stage', 'non-stage')!r} run, not a finetune run."
        )
    if record.status == "FINISHED":
        raise UserError(f"--resume {config.resume}: that run already FINISHED; start a new run without --resume.")
    state, detail = clean_stale.process_state(record.tags)
    if record.status == "RUNNING" and state == clean_stale.ALIVE:
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
