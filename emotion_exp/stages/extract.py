"""The extract stage: pooled hidden states of every split, logged once and reused by key."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from emotion_exp import data, features, models, plots, tracking
from emotion_exp.config import DataConfig, ExtractConfig, subset
from emotion_exp.data import DatasetSplits


def run(config: ExtractConfig) -> str:
    """Extract (or reuse) the features of every split; return the id of the run that holds them.

    A FINISHED extract run of the same data and feature key (model, pooling, max_length,
    resolved precision) in this experiment is reused: this run then records which one and
    computes nothing.
    """
    with tracking.stage_run("extract", config) as run:
        splits = data.load_splits(subset(config, DataConfig))
        tracking.log_dataset(splits)
        resolved = models.resolve(config.model)
        key = features.feature_key(resolved, config.pooling, config.max_length, config.precision)
        tracking.log_model_source(resolved, key["precision"])
        found = tracking.find_extract_run(splits.digest, key)
        if found:
            tracking.set_feature_key(key, found)
            tracking.set_tags({"reused_features": "true"})
            return found

        encoder = features.load_encoder(resolved, config.precision)
        extractions = features.extract_splits(
            splits, encoder, pooling=config.pooling, max_length=config.max_length, batch_size=config.batch_size
        )
        log_extractions(extractions)
        with tempfile.TemporaryDirectory() as folder:
            path = features.save(Path(folder) / Path(tracking.FEATURES_ARTIFACT).name, extractions, splits)
            tracking.log_artifact(str(path), str(Path(tracking.FEATURES_ARTIFACT).parent))
        log_plots(extractions["train"].features, splits, seed=config.seed, max_points=config.umap_max_points)
        # Tagged last: a run that failed half-way is never found as a source of features.
        tracking.set_feature_key(key, run.info.run_id)
        return run.info.run_id


def log_extractions(extractions: dict[str, features.Extraction]) -> None:
    """Throughput over all splits (tokenization and forward passes only), seconds and truncations per split."""
    texts = sum(len(e.features) for e in extractions.values())
    seconds = sum(e.seconds for e in extractions.values())
    prefix = tracking.SPLIT_PREFIX
    tracking.log_metrics(
        {
            "texts_per_second": texts / seconds if seconds > 0 else 0.0,
            "extract_seconds": seconds,
            **{f"extract_seconds_{prefix[name]}": e.seconds for name, e in extractions.items()},
            "truncated_texts": sum(e.truncated for e in extractions.values()),
            **{f"truncated_{prefix[name]}": e.truncated for name, e in extractions.items()},
        }
    )


def log_plots(train_features: np.ndarray, splits: DatasetSplits, *, seed: int, max_points: int) -> None:
    """The study's figures: label distribution, UMAP overlay and per-label grid of the train features."""
    labels = splits.train["label"].to_numpy()
    tracking.log_figure(plots.label_distribution(labels, splits.label_names), "plots/label_distribution.png")
    embedding, used = plots.umap_embedding(train_features, labels, seed=seed, max_points=max_points)
    tracking.log_figure(
        plots.umap_overlay(embedding, used, splits.label_names, title="UMAP of the train features"),
        "plots/umap_overlay.png",
    )
    tracking.log_figure(plots.umap_per_label(embedding, used, splits.label_names), "plots/umap_per_label.png")
