"""The extract stage: pooled hidden states of every split, logged once and reused by key."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from emotion_exp import engine, features, models, plots, tracking
from emotion_exp.config import ExtractConfig
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.stages.skeleton import SPLIT_PREFIX, log_figure, log_model_source, open_stage


def run(config: ExtractConfig, *, splits: DatasetSplits | None = None) -> str:
    """Extract (or reuse) the features of every split; return the id of the run that holds them.

    A FINISHED extract run of the same data and feature key (model, the digest of its weights and
    tokenizer, pooling, max_length, resolved precision and runtime) in this experiment is reused:
    this run then records which one and computes nothing.
    """
    with open_stage("extract", config, splits=splits, label_plot=False) as stage:
        splits = stage.splits
        resolved = models.resolve(config.model)
        chosen = engine.resolve(config.runtime, config.precision, config.threads)  # once, for the whole run
        tokenizer, model = models.load_tokenizer(resolved), models.load_encoder(resolved)
        digest = features.model_digest(tokenizer, model)
        key = features.feature_key(resolved, config.pooling, config.max_length, chosen, digest)
        log_model_source(resolved, chosen.precision)
        mlflow.set_tags(chosen.tags())
        found = find_extract_run(splits.digest, key)
        if found:
            set_feature_key(key, found)
            mlflow.set_tag("reused_features", "true")
            return found

        encoder = features.encoder_from(tokenizer, model, chosen.precision, chosen.threads)
        encoder = features.on_runtime(encoder, chosen.runtime, config.pooling)
        extractions = features.extract_splits(
            splits,
            encoder,
            pooling=config.pooling,
            max_length=config.max_length,
            batch_size=config.batch_size,
            batch_tokens=config.batch_tokens,
        )
        log_extractions(extractions)
        with tempfile.TemporaryDirectory() as folder:
            path = features.save(Path(folder) / Path(FEATURES_ARTIFACT).name, extractions, splits)
            mlflow.log_artifact(str(path), str(Path(FEATURES_ARTIFACT).parent))
        stage.log_label_distribution()
        log_plots(extractions["train"].features, splits, seed=config.seed, max_points=config.umap_max_points)
        # Tagged last: a run that failed half-way is never found as a source of features.
        set_feature_key(key, stage.run_id)
        return stage.run_id


def log_extractions(extractions: dict[str, features.Extraction]) -> None:
    """Throughput over all splits (tokenization and forward passes only), seconds and truncations per split,
    and the intra-op thread count (tag ``threads_used``)."""
    texts = sum(len(e.features) for e in extractions.values())
    seconds = sum(e.seconds for e in extractions.values())
    mlflow.log_metrics(
        {
            "texts_per_second": texts / seconds if seconds > 0 else 0.0,
            "extract_seconds": seconds,
            **{f"extract_seconds_{SPLIT_PREFIX[name]}": e.seconds for name, e in extractions.items()},
            "truncated_texts": sum(e.truncated for e in extractions.values()),
            **{f"truncated_{SPLIT_PREFIX[name]}": e.truncated for name, e in extractions.items()},
        }
    )
    mlflow.set_tags({"threads_used": str(list(extractions.values())[-1].threads)})


def log_plots(train_features: np.ndarray, splits: DatasetSplits, *, seed: int, max_points: int) -> None:
    """UMAP overlay and per-label grid of the train features."""
    labels = splits.train["label"].to_numpy()
    embedding, used = plots.umap_embedding(train_features, labels, seed=seed, max_points=max_points)
    log_figure(
        plots.umap_overlay(embedding, used, splits.label_names, title="UMAP of the train features"),
        "plots/umap_overlay.png",
    )
    log_figure(plots.umap_per_label(embedding, used, splits.label_names), "plots/umap_per_label.png")


# Extracted features are logged once and found again by (dataset digest, feature key).
FEATURES_ARTIFACT = "features/features.npz"
FEATURE_KEY_PREFIX = "features_"


def set_feature_key(key: Mapping[str, str], features_run_id: str | None = None) -> None:
    """Tag the active extract run with what its features depend on (and where they are stored)."""
    tags = {f"{FEATURE_KEY_PREFIX}{name}": value for name, value in key.items()}
    if features_run_id:
        tags["features_run_id"] = features_run_id
    mlflow.set_tags(tags)


def find_extract_run(dataset_digest: str, key: Mapping[str, str]) -> str | None:
    """The run holding the features of the newest FINISHED extract run of this dataset and key.

    Searches the current experiment. The key (``features.feature_key``)
    is compared in Python, so no value has to survive quoting in a filter string; an extract run
    that itself reused features points at the run that holds them (``features_run_id`` tag).
    """
    runs = MlflowClient().search_runs(
        [tracking.current_experiment_id()],
        filter_string=(
            f"tags.stage = 'extract' and tags.dataset_digest = '{dataset_digest}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    for run in runs:
        tags = run.data.tags
        if "features_run_id" in tags and _key_differences(tags, key) == []:
            return tags["features_run_id"]
    return None


def check_extract_run(run_id: str, dataset_digest: str, key: Mapping[str, str]) -> str:
    """Validate ``--features_run_id``; return the run that holds its features.

    The run must exist, be a FINISHED extract run of the same dataset, and have made its
    features the same way (``features.feature_key``) as this stage would.
    """
    record = tracking.find_run(run_id)
    if record is None:
        raise UserError(
            f"--features_run_id {run_id}: there is no such run in the tracking store {mlflow.get_tracking_uri()}; "
            "pass the id of a finished extract run, or leave it empty to find or extract the features."
        )
    if record.tags.get("stage") != "extract" or record.status != "FINISHED" or "features_run_id" not in record.tags:
        raise UserError(
            f"--features_run_id {run_id} is a {record.status} {record.tags.get('stage', 'untagged')!r} run, not a "
            "finished extract run; pass the id of one (emotion-exp extract makes one), or leave it empty."
        )
    found = record.tags.get("dataset_digest", "")
    if found != dataset_digest:
        raise UserError(
            f"--features_run_id {run_id} holds features of another dataset ({record.tags.get('dataset_name', '?')}, "
            f"digest {found[:12]}) than this run's ({dataset_digest[:12]}); pass an extract run of the same data "
            "(same dataset, max_samples, seed and fractions), or leave it empty."
        )
    differences = _key_differences(record.tags, key)
    if differences:
        raise UserError(
            f"--features_run_id {run_id} made its features with {', '.join(differences)}; pass the same "
            "values to this stage, or leave --features_run_id empty to find or extract matching features."
        )
    return record.tags["features_run_id"]


def _key_differences(tags: Mapping[str, str], key: Mapping[str, str]) -> list[str]:
    """``name=<theirs> (not <ours>)`` for each key field where a run's tags differ from ``key``."""
    return [
        f"{name}={tags.get(FEATURE_KEY_PREFIX + name)} (not {value})"
        for name, value in key.items()
        if tags.get(FEATURE_KEY_PREFIX + name) != value
    ]
