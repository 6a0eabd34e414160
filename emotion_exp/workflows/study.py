"""The main entry point: the whole study as nested runs, compared on the parent run.

The parent loads the data once (and draws its label distribution); every child gets the same
splits. Each stage runs with ``MainConfig.stage_config(stage)``, so every stage parameter can
be set from ``main`` (``catalog.compose_study`` says how the names are composed), and with what
every workflow decides for a model stage (``StageSpec.set_by_workflows``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, console, plots, registry, significance, tracking
from emotion_exp.catalog import MainConfig
from emotion_exp.config import CHAMPION_ALIAS, EvaluateConfig
from emotion_exp.data import DatasetSplits, LabelledData
from emotion_exp.errors import UserError
from emotion_exp.stages import evaluate, extract, promote
from emotion_exp.stages.skeleton import log_figure, open_stage

CHAMPION_METRICS = ("test_accuracy", "test_f1_weighted", "test_f1_macro", "test_loss", "test_ece", "test_brier")
COMPARED_METRICS = (
    "val_accuracy",
    "val_f1_weighted",
    "val_f1_macro",
    "val_loss",
    "val_ece",
    "test_accuracy",
    "test_f1_weighted",
)


def run(config: MainConfig) -> str:
    """Run every stage as a child of one parent run; log the comparison table and chart."""
    started = time.perf_counter()
    with open_stage("main", config) as parent:
        splits = parent.splits
        # Extract first (reusing a finished extract run with the same key); the feature heads read its features.
        features_run_id = extract.run(config.stage_config("extract"), splits=splits)
        mlflow.set_tag("features_run_id", features_run_id)
        children = {}
        for name in catalog.compared_in_study():
            stage = catalog.STAGES[name]
            decided = stage.set_by_workflows(features_run_id)
            children[name] = stage.run(dataclasses.replace(config.stage_config(name), **decided), splits=splits)
        log_comparison(children)
        if config.registered_model:
            promote.run(config.stage_config("promote"), splits=splits)
            evaluate_champion(config, splits)
    console.say(summary(parent.run_id, time.perf_counter() - started))
    return parent.run_id


def summary(parent_run_id: str, seconds: float) -> str:
    """The console summary of a finished study: its stages' scores and seconds, the champion, the store."""
    children = tracking.child_runs(parent_run_id)
    decisions = [child for child in children if "promote_decision" in child["tags"]]
    decision = name = None
    if decisions:
        tags = decisions[-1]["tags"]
        verdict = "promoted" if tags.get("promote_decision") == "promoted" else "kept the alias"
        decision = f"{verdict} ({tags.get('promote_candidate_stage')} was the best run): {tags.get('promote_reason')}"
        name = tags.get("registered_model")
    experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
    parent = MlflowClient().get_run(parent_run_id).data
    compared = [_with_paired(child, parent.metrics, parent.tags) for child in children if child not in decisions]
    text = console.summary(
        compared,
        run_id=parent_run_id,
        seconds=seconds,
        experiment=MlflowClient().get_experiment(experiment_id).name,
        decision=decision,
        champion_uri=f"models:/{name}@{CHAMPION_ALIAS}" if name else None,
        tracking_uri=mlflow.get_tracking_uri(),
    )
    scored = [child["run_id"] for child in compared if "val_accuracy" in child]  # the model stages, not extract
    runs, compared_url = tracking.experiment_url(experiment_id), tracking.comparison_url(experiment_id, scored)
    return f"{text}\nIn the MLflow UI: the runs {runs}\n  and the stage runs side by side {compared_url}"


def _with_paired(child: dict[str, Any], metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any]:
    """A child's row with the paired difference the parent logged for its stage (``log_comparison``)."""
    stage = child["stage"]
    paired = {key.removeprefix(f"{stage}_"): value for key, value in metrics.items() if key.startswith(f"{stage}_val_")}
    versus = tags.get(f"{stage}_versus")
    return {**child, **paired, **({"versus": versus} if versus else {})}


def evaluate_champion(config: MainConfig, splits: DatasetSplits) -> None:
    """Evaluate the champion on this study's test split; its scores go on the parent as ``champion_test_*``.

    The champion may be an older version trained on other data (promote never compares across
    datasets); one that does not know these labels cannot be scored here, and the parent says why.
    """
    evaluate_config = EvaluateConfig(
        model_uri=f"models:/{registry.registered_name(config.registered_model, splits.name, splits.label_names)}"
        f"@{CHAMPION_ALIAS}",
        dataset=config.dataset,
        split="test",
        text_column=config.text_column,
        label_column=config.label_column,
    )
    try:
        run_id = evaluate.run(evaluate_config, labelled=LabelledData.from_splits(splits, "test"))
    except UserError as error:
        mlflow.set_tag("champion_evaluation", f"not evaluated: {error}"[:5000])
        console.say(f"main: the champion was not evaluated on the test split: {error}")
        return
    scores = MlflowClient().get_run(run_id).data.metrics
    mlflow.set_tag("champion_evaluation", run_id)
    mlflow.log_metrics({f"champion_{name}": scores[name] for name in CHAMPION_METRICS})


def comparison_table(children: dict[str, str]) -> pd.DataFrame:
    """One row per stage run: its scores with their 95% intervals, and its paired difference to the best other stage.

    The best other stage is the one with the highest validation accuracy (selection on validation
    only); the difference in accuracy is tested on the same texts of each split (paired bootstrap
    interval, exact McNemar p-value), from the runs' per-text predictions.
    """
    rows, predictions = [], {}
    for stage, run_id in children.items():
        logged = MlflowClient().get_run(run_id).data
        scores = logged.metrics
        row: dict[str, object] = {"stage": stage, "run_id": run_id}
        if "val_accuracy_mean" in scores:  # trained with several seeds: the spread, beside the best seed's scores
            row.update({f"val_accuracy_{s}": scores[f"val_accuracy_{s}"] for s in ("mean", "std", "min", "max")})
            row["seeds_count"] = scores["seeds_count"]
        elif "seeds_note" in logged.tags:
            row["seeds_note"] = logged.tags["seeds_note"]
        for metric in COMPARED_METRICS:
            row[metric] = scores.get(metric)
            if metric.removeprefix("val_").removeprefix("test_") in significance.METRICS:
                row[f"{metric}_ci_low"] = scores.get(f"{metric}_ci_low")
                row[f"{metric}_ci_high"] = scores.get(f"{metric}_ci_high")
        rows.append(row)
        table = tracking.run_predictions(run_id)
        if table is not None:
            predictions[stage] = table
    comparison = pd.DataFrame(rows)
    validation = dict(_scores(comparison, predictions))
    for index, stage in enumerate(comparison["stage"]):
        other = significance.best_other(validation, stage) if stage in validation else None
        if other is None:
            continue
        comparison.loc[index, "versus"] = other
        for split, prefix in (("validation", "val"), ("test", "test")):
            if not (predictions[stage]["split"] == split).any():
                continue
            paired = significance.compare_predictions(predictions[stage], predictions[other], split)
            comparison.loc[index, f"{prefix}_accuracy_delta"] = paired.difference.estimate
            comparison.loc[index, f"{prefix}_accuracy_delta_ci_low"] = paired.difference.low
            comparison.loc[index, f"{prefix}_accuracy_delta_ci_high"] = paired.difference.high
            comparison.loc[index, f"{prefix}_mcnemar_pvalue"] = paired.test.pvalue
    return comparison


def _scores(comparison: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> list[tuple[str, float]]:
    """(stage, validation accuracy) of the stages that can be compared text by text."""
    return [
        (stage, float(score))
        for stage, score in zip(comparison["stage"], comparison["val_accuracy"], strict=True)
        if stage in predictions and score is not None and pd.notna(score)
    ]


def readable_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison as people read it: ``0.933 [0.922, 0.944]`` cells and one paired column per split."""
    readable = pd.DataFrame({"stage": comparison["stage"]})
    records = comparison.to_dict("records")
    for metric in ("val_accuracy", "val_f1_weighted", "test_accuracy", "test_f1_weighted"):
        readable[metric] = [console.shown_score(row, metric) for row in records]
    if "val_accuracy_mean" in comparison or "seeds_note" in comparison:
        readable["val_accuracy over seeds (mean ± std)"] = [
            console.shown_spread(row, "val_accuracy") or _seeds_note(row) for row in records
        ]
    if "versus" in comparison:
        readable["versus"] = comparison["versus"].fillna("-")
        for prefix in ("val", "test"):
            readable[f"{prefix} accuracy difference (paired 95% CI), McNemar p"] = [
                console.shown_difference(row, prefix) for row in comparison.to_dict("records")
            ]
    return readable


def _seeds_note(row: dict[str, Any]) -> str:
    note = row.get("seeds_note")
    return note if isinstance(note, str) else "-"


def log_comparison(children: dict[str, str]) -> pd.DataFrame:
    """Log the study's closing comparison on the parent: markdown, CSV, metrics and a bar chart with intervals."""
    table = comparison_table(children)
    mlflow.log_text(
        COMPARISON_NOTE + readable_comparison(table).to_markdown(index=False) + "\n", "comparison/comparison.md"
    )
    mlflow.log_text(table.to_csv(index=False), "comparison/comparison.csv")
    numeric = [column for column in table.columns if column not in ("stage", "run_id", "versus", "seeds_note")]
    mlflow.log_metrics(
        {
            f"{row['stage']}_{column}": float(row[column])
            for row in table.to_dict("records")
            for column in numeric
            if row[column] is not None and pd.notna(row[column])
        }
    )
    if "versus" in table:
        versus = {
            f"{row['stage']}_versus": row["versus"] for row in table.to_dict("records") if pd.notna(row["versus"])
        }
        mlflow.set_tags(versus)
    log_figure(plots.comparison(table), "plots/comparison.png")
    return table


COMPARISON_NOTE = """Each score with its 95% bootstrap interval over the split's texts. The difference is in accuracy
to the best other stage (by validation accuracy), tested on the same texts: its paired 95% interval
and the exact McNemar p-value on the texts where exactly one of the two is right. An interval
that holds 0, or p >= 0.05, is a gap that chance alone can make.

"""
