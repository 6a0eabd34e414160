"""Repeated seeds: one stage trained once per seed as nested runs, summarised on a parent run.

One seed's score mixes the method with the luck of its initialisation, data order and dropout:
two fine-tunes that differ only in their seed routinely differ by more than a gap a user would
act on. ``--seeds 3`` trains three times on the same splits (the split itself always uses
``--seed``) and the parent run, tagged with the stage's name like a single run, logs

- ``<score>_mean``, ``_std`` (sample standard deviation), ``_min`` and ``_max`` of every
  validation and test score, and the per-seed values (``seeds/per_seed.md`` and ``.csv``);
- the scores, intervals and per-text predictions of the seed with the best validation score
  (selection on validation only), whose model is the parent's: linked as the parent's output
  model and, where asked, registered; so ``compare`` and ``promote`` treat the parent as that model.

Stages whose fit does not depend on the seed (``catalog.StageSpec.seedless``) say so and train
once instead of repeating one fit.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, console, registry, significance, tracking
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.stages.skeleton import Stage, log_table, open_stage

SELECTED_BY = "val_f1_weighted"
"""The best seed is the one with the highest validation weighted F1, the metric promote ranks by."""


def repeated(config: Any) -> bool:
    """Whether ``config`` asks for more than one seed."""
    return len(config.seed_list()) > 1


def run(
    stage: str,
    config: Any,
    run_once: Callable[..., str],
    *,
    splits: DatasetSplits | None = None,
    train_rows: Sequence[int] | None = None,
    score_test: bool = True,
    register: Callable[[str, Stage], str] | None = None,
    labels: tracking.RunLabels | None = None,
) -> str:
    """Train ``stage`` once per seed of ``config.seeds`` under one parent run; return the parent's run id.

    ``run_once`` is the stage's own ``run`` (``catalog.StageRun``): it trains one seed, given the
    same ``splits``, ``train_rows`` and ``score_test``, and returns its run id. ``register(name,
    parent_run_id)`` decides the registered name for the best seed's model where the stage has a
    rule of its own (finetune: only a new best version unless the name was asked for); it gets the
    parent stage, which by then carries the best seed's scores.
    """
    seeds = config.seed_list()
    seedless = catalog.STAGES[stage].seedless
    if seedless:
        console.say(
            f"{stage}: --seeds {config.seeds} would repeat one fit {len(seeds)} times: {seedless}; "
            f"training once with seed {seeds[0]}."
        )
        labels = labels or tracking.RunLabels()
        labels.tags["seeds_note"] = f"one fit for {len(seeds)} seeds: {seedless}"
        once = dataclasses.replace(config, seeds="", seed=seeds[0])
        return run_once(once, splits=splits, train_rows=train_rows, score_test=score_test, labels=labels)
    if getattr(config, "nproc_per_node", 1) > 1:
        raise UserError(
            f"--seeds {config.seeds} trains every seed in this process: pass --nproc_per_node 1, or start one "
            "torchrun run per seed (--seed)."
        )
    with open_stage(stage, config, splits=splits, train_rows=train_rows, labels=labels) as parent:
        mlflow.set_tag("seeds", ",".join(map(str, seeds)))
        run_ids = {}
        for seed in seeds:
            seed_config = dataclasses.replace(config, seed=seed, seeds="", registered_model="")
            run_ids[seed] = run_once(
                seed_config, splits=parent.full_splits, train_rows=train_rows, score_test=score_test
            )
        per_seed = per_seed_scores(run_ids)
        log_table(per_seed, "seeds/per_seed.parquet")
        mlflow.log_text(per_seed.to_markdown(index=False, floatfmt=".4f"), "seeds/per_seed.md")
        mlflow.log_metrics(summary_metrics(per_seed))
        best_seed = int(per_seed.loc[per_seed[SELECTED_BY].idxmax(), "seed"])
        adopt(run_ids[best_seed], best_seed, parent.run_id)
        registered = parent.registered_name(config.registered_model)
        if registered and register is not None:
            registered = register(registered, parent)
        if registered:
            register_best(run_ids[best_seed], registered, parent, best_seed, seeds)
        return parent.run_id


def per_seed_scores(run_ids: dict[int, str]) -> pd.DataFrame:
    """One row per seed: its run id and every validation and test score it logged (not intervals, not row counts)."""
    rows = []
    for seed, run_id in run_ids.items():
        logged = MlflowClient().get_run(run_id).data.metrics
        scores = {
            name: value
            for name, value in logged.items()
            if name.startswith(("val_", "test_")) and "_ci_" not in name and not name.endswith("_rows")
        }
        rows.append({"seed": seed, "run_id": run_id, **scores})
    return pd.DataFrame(rows)


def summary_metrics(per_seed: pd.DataFrame) -> dict[str, float]:
    """``<score>_mean``, ``_std`` (sample, n-1), ``_min`` and ``_max`` of every score column, and ``seeds_count``."""
    summary: dict[str, float] = {"seeds_count": len(per_seed)}
    for column in per_seed.columns.drop(["seed", "run_id"]):
        values = [float(v) for v in per_seed[column] if not pd.isna(v)]
        if not values:
            continue
        summary[f"{column}_mean"] = statistics.fmean(values)
        summary[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[f"{column}_min"] = min(values)
        summary[f"{column}_max"] = max(values)
    return {name: value for name, value in summary.items() if math.isfinite(value)}


def adopt(best_run_id: str, best_seed: int, parent_run_id: str) -> None:
    """Make the best seed's model the parent's: its scores and intervals, per-text predictions and logged model."""
    best = MlflowClient().get_run(best_run_id).data.metrics
    mlflow.log_metrics({name: value for name, value in best.items() if name.startswith(("val_", "test_"))})
    mlflow.set_tags({"best_seed": best_seed, "best_seed_run_id": best_run_id})
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(
            run_id=best_run_id, artifact_path=significance.PREDICTIONS_ARTIFACT, dst_path=folder
        )
        mlflow.log_artifact(local, "predictions")
    model_uri = registry.model_of_run(best_run_id)
    if model_uri is not None:
        model_id = mlflow.get_logged_model(model_uri.removeprefix("models:/")).model_id
        MlflowClient().log_outputs(parent_run_id, [LoggedModelOutput(model_id=model_id, step=0)])


def register_best(best_run_id: str, name: str, parent: Stage, best_seed: int, seeds: list[int]) -> None:
    """Register the best seed's model under ``name``, its description saying which seeds it was chosen from."""
    model_uri = registry.model_of_run(best_run_id)
    if model_uri is None:
        raise UserError(f"The best seed's run {best_run_id} logged no model, so there is nothing to register.")
    version = registry.register(model_uri, name, parent.splits.label_names)
    chosen = ", ".join(map(str, seeds))
    card = (
        f"Seed {best_seed}, the best of seeds {chosen} by validation {SELECTED_BY} (run `{best_run_id}`); "
        f"every seed's scores are on run `{parent.run_id}` (seeds/per_seed.md)."
    )
    tags = {"stage": parent.name, "dataset_digest": parent.splits.digest, "seed": str(best_seed)}
    registry.describe_version(name, version, card, tags, overwrite=True)
    mlflow.set_tags({"registered_model": name, "registered_version": version})
