"""The learning-curve stage: how each method scores as the number of labelled training texts grows.

Every chosen stage is trained on nested stratified subsets of the training split (each holds
the smaller ones and every label, drawn with the seed) and scored on the full validation and
test splits; each point is a nested run with ``train_size``, drawn with its validation
accuracy's 95% interval as a band. Features are extracted once and every feature head's point
fits on its rows of them.
"""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, plots, subsets, tracking
from emotion_exp.catalog import LearningCurveConfig
from emotion_exp.config import DummyConfig, ExtractConfig, subset
from emotion_exp.data import DatasetSplits
from emotion_exp.stages import dummy, extract
from emotion_exp.stages.skeleton import log_figure, open_stage

SCORES = (
    "val_accuracy",
    "val_accuracy_ci_low",
    "val_accuracy_ci_high",
    "val_f1_weighted",
    "val_f1_macro",
    "test_accuracy",
    "test_f1_weighted",
)


def run(config: LearningCurveConfig) -> str:
    """Train every stage at every fraction as nested runs; log the table and the curve on the parent."""
    with open_stage("learning-curve", config) as parent:
        splits = parent.splits
        fractions, merged = subsets.distinct_fractions(splits.train["label"].to_numpy(), config.fraction_list)
        for note in merged:
            print(f"learning-curve: {note}")
        subsets_rows = subsets.nested_stratified_subsets(splits.train["label"].to_numpy(), fractions, config.seed)
        floor = _metrics(dummy.run(subset(config, DummyConfig), splits=splits))["val_accuracy"]
        mlflow.log_metric("dummy_val_accuracy", floor)
        features_run_id = ""
        if any(catalog.STAGES[stage].reads_features for stage in config.stage_list):
            features_run_id = extract.run(subset(config, ExtractConfig), splits=splits)
        points = []
        for stage in config.stage_list:
            for fraction, rows in zip(fractions, subsets_rows):
                params = {"train_size": len(rows), "train_fraction": fraction}
                labels = tracking.RunLabels(params=params, tags={"curve_point": f"{stage}@{len(rows)}"})
                run_id = _run_point(stage, config, splits, rows, features_run_id, labels)
                scores = _metrics(run_id)
                points.append({"stage": stage, **params, "run_id": run_id, **{m: scores.get(m) for m in SCORES}})
                log_curve(pd.DataFrame(points), floor)
        return parent.run_id


def _metrics(run_id: str) -> dict[str, float]:
    return MlflowClient().get_run(run_id).data.metrics


def _run_point(
    stage: str,
    config: LearningCurveConfig,
    splits: DatasetSplits,
    rows: np.ndarray,
    features_run_id: str,
    labels: tracking.RunLabels,
) -> str:
    """One point: ``stage`` trained on ``rows`` of the training split, registering nothing.

    A feature head fits on its rows of the features extracted once for the whole split.
    """
    spec = catalog.STAGES[stage]
    point_config = dataclasses.replace(subset(config, spec.config), **spec.set_by_workflows(features_run_id))
    return spec.run(point_config, splits=splits, train_rows=rows, labels=labels)


def log_curve(table: pd.DataFrame, floor: float) -> None:
    """The table behind the curve (markdown and CSV), the curve itself and one stepped metric per stage.

    Logged after every point, so an interrupted curve keeps what it measured.
    """
    mlflow.log_text(table.to_markdown(index=False, floatfmt=".4f"), "learning_curve/points.md")
    mlflow.log_text(table.to_csv(index=False), "learning_curve/points.csv")
    last = table.iloc[-1]
    mlflow.log_metric(f"{last.stage}_val_accuracy", float(last.val_accuracy), step=int(last.train_size))
    log_figure(plots.learning_curve(table, floor), "plots/learning_curve.png")
