"""The main entry point: the whole study as nested runs, compared on the parent run."""

from __future__ import annotations

import dataclasses

import pandas as pd

from emotion_exp import data, plots, tracking
from emotion_exp.config import (
    DataConfig,
    DummyConfig,
    ExtractConfig,
    FinetuneConfig,
    MainConfig,
    ProbeConfig,
    PromoteConfig,
    TfidfConfig,
    subset,
)
from emotion_exp.stages import dummy, extract, finetune, probe, promote, tfidf

COMPARED_METRICS = ("val_accuracy", "val_f1_weighted", "val_f1_macro", "test_accuracy", "test_f1_weighted")


def run(config: MainConfig) -> str:
    """Run every stage as a child of one parent run; log the comparison table and chart."""
    with tracking.stage_run("main", config) as parent:
        splits = data.load_splits(subset(config, DataConfig))
        tracking.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
        # Extract first (reusing a finished extract run with the same key); the probe reads its features.
        features_run_id = extract.run(subset(config, ExtractConfig))
        tracking.set_tags({"features_run_id": features_run_id})
        children = {
            "dummy": dummy.run(subset(config, DummyConfig)),
            # Baselines are not registered here: promote registers whichever run is best.
            "probe": probe.run(
                dataclasses.replace(subset(config, ProbeConfig), features_run_id=features_run_id, registered_model="")
            ),
            "tfidf": tfidf.run(dataclasses.replace(subset(config, TfidfConfig), registered_model="")),
            "finetune": finetune.run(dataclasses.replace(subset(config, FinetuneConfig), registered_model="")),
        }
        log_comparison(children)
        if config.registered_model:
            promote.run(subset(config, PromoteConfig))
        return parent.info.run_id


def comparison_table(children: dict[str, str]) -> pd.DataFrame:
    """One row per stage run with its validation and test scores."""
    rows = []
    for stage, run_id in children.items():
        scores = tracking.run_metrics(run_id)
        rows.append({"stage": stage, "run_id": run_id, **{m: scores.get(m) for m in COMPARED_METRICS}})
    return pd.DataFrame(rows)


def log_comparison(children: dict[str, str]) -> pd.DataFrame:
    """Log the study's closing comparison on the parent: markdown, CSV, metrics and a bar chart."""
    table = comparison_table(children)
    tracking.log_text(table.to_markdown(index=False, floatfmt=".4f"), "comparison/comparison.md")
    tracking.log_text(table.to_csv(index=False), "comparison/comparison.csv")
    tracking.log_metrics(
        {
            f"{row.stage}_{metric}": getattr(row, metric)
            for row in table.itertuples()
            for metric in COMPARED_METRICS
            if pd.notna(getattr(row, metric))
        }
    )
    tracking.log_figure(plots.comparison(table), "plots/comparison.png")
    return table
