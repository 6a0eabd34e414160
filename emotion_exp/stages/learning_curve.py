"""The learning-curve stage: how each method scores as the number of labelled training texts grows.

Every chosen stage is trained on nested stratified subsets of the training split (each holds
the smaller ones and every label, drawn with the seed) and scored on the full validation and
test splits; each point is a nested run with ``train_size``. Features are extracted once and
every probe point fits on its rows of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from emotion_exp import data, plots, subsets, tracking
from emotion_exp.config import (
    DataConfig,
    DummyConfig,
    ExtractConfig,
    FinetuneConfig,
    LearningCurveConfig,
    ProbeConfig,
    TfidfConfig,
    subset,
)
from emotion_exp.stages import dummy, extract, finetune, probe, tfidf

SCORES = ("val_accuracy", "val_f1_weighted", "val_f1_macro", "test_accuracy", "test_f1_weighted")


def run(config: LearningCurveConfig) -> str:
    """Train every stage at every fraction as nested runs; log the table and the curve on the parent."""
    with tracking.stage_run("learning-curve", config) as parent:
        splits = data.load_splits(subset(config, DataConfig))
        tracking.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
        fractions = config.fraction_list
        subsets_rows = subsets.nested_stratified_subsets(splits.train["label"].to_numpy(), fractions, config.seed)
        floor = tracking.run_metrics(dummy.run(subset(config, DummyConfig)))["val_accuracy"]
        tracking.log_metrics({"dummy_val_accuracy": floor})
        features_run_id = extract.run(subset(config, ExtractConfig)) if "probe" in config.stage_list else ""
        points = []
        for stage in config.stage_list:
            for fraction, rows in zip(fractions, subsets_rows):
                params = {"train_size": len(rows), "train_fraction": fraction}
                with tracking.next_stage_run(params=params, tags={"curve_point": f"{stage}@{len(rows)}"}):
                    run_id = _run_point(stage, config, rows, features_run_id)
                scores = tracking.run_metrics(run_id)
                points.append({"stage": stage, **params, "run_id": run_id, **{m: scores.get(m) for m in SCORES}})
                log_curve(pd.DataFrame(points), floor)
        return parent.info.run_id


def _run_point(stage: str, config: LearningCurveConfig, rows: np.ndarray, features_run_id: str) -> str:
    if stage == "tfidf":
        return tfidf.run(dataclasses.replace(subset(config, TfidfConfig), registered_model=""), train_rows=rows)
    if stage == "probe":
        probe_config = dataclasses.replace(
            subset(config, ProbeConfig), features_run_id=features_run_id, registered_model=""
        )
        return probe.run(probe_config, train_rows=rows)
    finetune_config = dataclasses.replace(subset(config, FinetuneConfig), registered_model="")
    return finetune.run(finetune_config, train_rows=rows)


def log_curve(table: pd.DataFrame, floor: float) -> None:
    """The table behind the curve (markdown and CSV), the curve itself and one stepped metric per stage.

    Logged after every point, so an interrupted curve keeps what it measured.
    """
    tracking.log_text(table.to_markdown(index=False, floatfmt=".4f"), "learning_curve/points.md")
    tracking.log_text(table.to_csv(index=False), "learning_curve/points.csv")
    last = table.iloc[-1]
    tracking.log_metrics({f"{last.stage}_val_accuracy": last.val_accuracy}, step=int(last.train_size))
    tracking.log_figure(plots.learning_curve(table, floor), "plots/learning_curve.png")
