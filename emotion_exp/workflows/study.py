"""The main entry point: the whole study as nested runs, compared on the parent run.

The parent loads the data once (and draws its label distribution); every child gets the same
splits. Each stage runs with ``MainConfig.stage_config(stage)``, so every stage parameter can
be set from ``main`` (``catalog.compose_study`` says how the names are composed), and with what
every workflow decides for a model stage (``StageSpec.set_by_workflows``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
import time
import urllib.parse
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, console, plots, registry, serving, significance, tracking
from emotion_exp.catalog import MainConfig
from emotion_exp.config import CHAMPION_ALIAS, EvaluateConfig
from emotion_exp.data import DatasetSplits, LabelledData
from emotion_exp.errors import UserError
from emotion_exp.stages import evaluate, extract, promote
from emotion_exp.stages.skeleton import log_figure, open_stage

CHAMPION_METRICS = ("test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_f1_weighted")
"""The champion's scores on this study's test split that the parent shows (``champion_<name>``)."""
HEADLINE = (
    "val_accuracy",
    "val_accuracy_ci_low",
    "val_accuracy_ci_high",
    "val_accuracy_delta",
    "val_accuracy_delta_ci_low",
    "val_accuracy_delta_ci_high",
    "val_mcnemar_pvalue",
)
"""What the parent logs per stage as metrics (``<stage>_<name>``): its validation accuracy and its paired difference
to the best other stage, each with its interval. Everything else is in ``comparison/comparison.csv``."""
COMPARISON_CSV = "comparison/comparison.csv"
CHART = "plots/comparison.png"
NOTE_TAG = "mlflow.note.content"
"""The tag MLflow's UI shows as a run's or an experiment's description (markdown)."""
DESCRIBED_TAG = "study_description_sha256"
"""On the experiment: the digest of the description the latest study wrote there, so the next study replaces only
its own (never a description someone wrote)."""
MAX_RUN_NAME = 250
"""MLflow's limit on a run name."""
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
        table = log_comparison(children)
        if config.registered_model:
            promote.run(config.stage_config("promote"), splits=splits)
            evaluate_champion(config, splits)
        describe(parent.run_id, table)
    console.say(summary(parent.run_id, time.perf_counter() - started))
    return parent.run_id


def champion_decision(children: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The study's promote decision as a sentence, and the registered model it was about (None, None without one)."""
    decisions = [child for child in children if "promote_decision" in child["tags"]]
    if not decisions:
        return None, None
    tags = decisions[-1]["tags"]
    verdict = "promoted" if tags.get("promote_decision") == "promoted" else "kept the alias"
    decision = f"{verdict} ({tags.get('promote_candidate_stage')} was the best run): {tags.get('promote_reason')}"
    return decision, tags.get("registered_model")


def summary(parent_run_id: str, seconds: float, ui_port: int | None = None) -> str:
    """The console summary of a finished study: its stages' scores and seconds, the champion, the store, the links.

    The links open the MLflow UI that the summary's command starts (on ``ui_port``, by default
    ``mlflow ui``'s own where it is free, else a free one), or the tracking server's.
    """
    children = tracking.child_runs(parent_run_id)
    decision, name = champion_decision(children)
    parent = MlflowClient().get_run(parent_run_id)
    experiment_id = parent.info.experiment_id
    paired = _paired_rows(parent_run_id)
    compared = [
        {**child, **paired.get(child["stage"], {})} for child in children if "promote_decision" not in child["tags"]
    ]
    tracking_uri = mlflow.get_tracking_uri()
    port = ui_port or serving.free_port(tracking.UI_PORT)
    text = console.summary(
        compared,
        run_id=parent_run_id,
        seconds=seconds,
        experiment=MlflowClient().get_experiment(experiment_id).name,
        decision=decision,
        champion_uri=f"models:/{name}@{CHAMPION_ALIAS}" if name else None,
        tracking_uri=tracking_uri,
        ui_port=port,
        caution=_caution(parent, paired),
    )
    address = tracking.ui_address(tracking_uri, port)
    links = [
        ("the study's result", tracking.run_url(address, experiment_id, parent_run_id)),
        ("its stage runs, best first", tracking.child_runs_url(address, experiment_id, parent_run_id, "val_accuracy")),
        ("its models", tracking.models_url(address, experiment_id)),
    ]
    return "\n".join([text, "In the MLflow UI:", *(f"  {label}: {url}" for label, url in links)])


def _paired_rows(parent_run_id: str) -> dict[str, dict[str, Any]]:
    """Each compared stage's row of the parent's comparison table (scores, paired difference, ``versus``)."""
    table = _comparison_csv(parent_run_id)
    if table is None:
        return {}
    table = table.astype(object).where(table.notna(), None)
    return {row["stage"]: {k: v for k, v in row.items() if v is not None} for row in table.to_dict("records")}


def _comparison_csv(parent_run_id: str) -> pd.DataFrame | None:
    """The parent's ``comparison/comparison.csv``, or None for a parent that logged none."""
    listed = {item.path for item in MlflowClient().list_artifacts(parent_run_id, "comparison")}
    if COMPARISON_CSV not in listed:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return pd.read_csv(
            mlflow.artifacts.download_artifacts(run_id=parent_run_id, artifact_path=COMPARISON_CSV, dst_path=folder)
        )


def _winner(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The stage row with the highest validation accuracy (None without a scored stage)."""
    scored = [row for row in rows.values() if row.get("val_accuracy") is not None]
    return max(scored, key=lambda row: row["val_accuracy"]) if scored else None


def _caution(parent: mlflow.entities.Run, rows: dict[str, dict[str, Any]]) -> str | None:
    """One line where the validation split is too small to separate the stages."""
    best, texts = _winner(rows), parent.data.metrics.get("val_rows")
    if best is None or texts is None:
        return None
    return significance.too_few_texts(
        int(texts), f"{best['stage']}'s val accuracy {console.shown_score(best, 'val_accuracy')}"
    )


def verdict(table: pd.DataFrame, *, markdown: bool = False) -> str | None:
    """Which stage won and by how much: ``finetune best: val accuracy 0.845 [0.785, 0.890], +0.065 [+0.005,
    +0.130] vs tfidf (p=0.06, not beyond chance)``; None when no stage was scored.

    The winner has the highest validation accuracy (selection on validation only); its margin is the
    paired difference to the runner-up on the same texts.
    """
    rows = {row["stage"]: row for row in table.astype(object).where(table.notna(), None).to_dict("records")}
    best = _winner(rows)
    if best is None:
        return None
    name = f"**{best['stage']}**" if markdown else best["stage"]
    text = f"{name} best: val accuracy {console.shown_score(best, 'val_accuracy')}"
    if best.get("val_accuracy_delta") is not None:
        pvalue, low = best["val_mcnemar_pvalue"], best["val_accuracy_delta_ci_low"]
        chance = "beyond chance" if pvalue < 0.05 and low > 0 else "not beyond chance"
        difference = console.shown_difference(best, "val").rsplit(", p=", 1)[0]
        text += f", {difference} (p={pvalue:.2g}, {chance})"
    return text


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
    """Log the study's closing comparison on the parent: markdown, CSV, the headline metrics and a bar chart."""
    table = comparison_table(children)
    mlflow.log_text(
        COMPARISON_NOTE + readable_comparison(table).to_markdown(index=False) + "\n", "comparison/comparison.md"
    )
    mlflow.log_text(table.to_csv(index=False), COMPARISON_CSV)
    mlflow.log_metrics(
        {
            f"{row['stage']}_{column}": float(row[column])
            for row in table.to_dict("records")
            for column in HEADLINE
            if column in row and row[column] is not None and pd.notna(row[column])
        }
    )
    log_figure(plots.comparison(table), CHART)
    return table


def describe(parent_run_id: str, table: pd.DataFrame) -> None:
    """Put the result where MLflow's UI shows it first: the parent's name and description, the experiment's.

    The parent is renamed ``main: <verdict>`` (the run page's title, the runs table's first column);
    its description (``mlflow.note.content``, markdown) holds the verdict, the champion decision, the
    chart and the table. The experiment's description, the first line on its Runs and Models tabs,
    becomes the same, unless someone else wrote it: it is replaced only where it is empty or is the
    one the last study wrote (``DESCRIBED_TAG``).
    """
    headline = verdict(table)
    if headline is None:
        return
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    note = [f"{verdict(table, markdown=True)}."]
    decision, name = champion_decision(tracking.child_runs(parent_run_id))
    if decision is not None:
        # The alias in code type: MLflow's markdown makes "@champion" a link to a user of that name.
        sentence = f"Champion `models:/{name}@{CHAMPION_ALIAS}`: " + re.sub(r"@(\w+)", r"`@\1`", decision)
        scores = {key.removeprefix("champion_"): value for key, value in parent.data.metrics.items()}
        if "test_accuracy" in scores:
            sentence += f"; on this study's test split, accuracy {console.shown_score(scores, 'test_accuracy')}"
        note.append(f"{sentence}.")
    chart = urllib.parse.urlencode({"path": CHART, "run_uuid": parent_run_id})
    note += [
        f"![Validation scores by stage with their 95% intervals](get-artifact?{chart})",
        readable_comparison(table).to_markdown(index=False),
        COMPARISON_NOTE.strip() + " All columns: `comparison/comparison.md` and `.csv` (Artifacts).",
    ]
    client.update_run(parent_run_id, name=f"main: {headline}"[:MAX_RUN_NAME])
    client.set_tag(parent_run_id, NOTE_TAG, "\n\n".join(note))
    experiment = client.get_experiment(parent.info.experiment_id)
    previous = experiment.tags.get(NOTE_TAG)
    if previous and _digest(previous) != experiment.tags.get(DESCRIBED_TAG):
        return  # a description someone wrote: left alone
    note.insert(1, f"The latest study: run `{parent_run_id}`, {time.strftime('%Y-%m-%d %H:%M')}.")
    latest = "\n\n".join(note)
    client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, latest)
    client.set_experiment_tag(experiment.experiment_id, DESCRIBED_TAG, _digest(latest))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


COMPARISON_NOTE = """Each score with its 95% bootstrap interval over the split's texts. The difference is in accuracy
to the best other stage (by validation accuracy), tested on the same texts: its paired 95% interval
and the exact McNemar p-value on the texts where exactly one of the two is right. An interval
that holds 0, or p >= 0.05, is a gap that chance alone can make.

"""
