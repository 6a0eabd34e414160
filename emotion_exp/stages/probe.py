"""The probe stage: logistic regression on extracted features, logged as a text -> label model."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np

from emotion_exp import baselines, data, engine, features, models, pyfunc, subsets
from emotion_exp.config import DataConfig, ExtractConfig, ProbeConfig, subset
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.stages import extract, seeds
from emotion_exp.stages.skeleton import LoggedModel, log_model_source, open_stage
from emotion_exp.tracking import RunLabels


def run(
    config: ProbeConfig,
    *,
    splits: DatasetSplits | None = None,
    train_rows: Sequence[int] | None = None,
    score_test: bool = True,
    labels: RunLabels | None = None,
) -> str:
    """Fit the probe on the train features, score validation and test, log the model; return the run id.

    Features come from ``--features_run_id``, else from the newest finished extract run with
    the same data and feature key, else from an extract run nested in this one. ``train_rows``
    fits on those rows of the training split only, reusing the features of the whole split (a
    learning-curve point); ``score_test=False`` leaves the test split unscored (a sweep's trial).
    """
    if seeds.repeated(config):
        return seeds.run("probe", config, run, splits=splits, labels=labels)
    if train_rows is not None and splits is None:
        splits = data.load_splits(subset(config, DataConfig))
    trained_on = splits if train_rows is None else subsets.with_train_rows(splits, train_rows)
    with open_stage("probe", config, splits=trained_on, labels=labels) as stage:
        splits = stage.splits if splits is None else splits  # the whole splits, whose features are logged
        resolved = models.resolve(config.model)
        chosen = engine.resolve(config.runtime, config.precision, config.threads)  # the extract stage tags why
        tokenizer, encoder = models.load_tokenizer(resolved), models.load_encoder(resolved)
        digest = features.model_digest(tokenizer, encoder)
        key = features.feature_key(resolved, config.pooling, config.max_length, chosen, digest)
        log_model_source(resolved, key["precision"])
        if config.features_run_id:
            features_run_id = extract.check_extract_run(config.features_run_id, splits.digest, key)
        else:
            found = extract.find_extract_run(splits.digest, key)
            features_run_id = found or extract.run(subset(config, ExtractConfig), splits=splits)
        mlflow.set_tag("features_run_id", features_run_id)
        feature_set = _load_features(features_run_id, splits)

        train_features, train_labels = feature_set.features["train"], feature_set.labels["train"]
        if train_rows is not None:
            train_features, train_labels = train_features[train_rows], train_labels[train_rows]
        pipeline = baselines.fit_probe(
            train_features,
            train_labels,
            C=config.C,
            class_weight=config.class_weight,
            max_iter=config.max_iter,
            seed=config.seed,
        )
        if not baselines.converged(pipeline, config.max_iter):
            warning = f"The logistic regression did not converge in {config.max_iter} iterations; raise --max_iter."
            mlflow.set_tag("warning", warning)
        n_labels = len(splits.label_names)
        with tempfile.TemporaryDirectory() as folder:
            # save_pretrained writes just what loading needs (also for a hub model, whose location is no folder).
            tokenizer.save_pretrained(folder)
            encoder.save_pretrained(folder)
            classifier = pyfunc.ProbeClassifier(
                pipeline,
                splits.label_names,
                pooling=config.pooling,
                max_length=config.max_length,
                batch_size=config.batch_size,
                precision=config.precision,  # as asked: auto resolves on the machine that loads the model
            )
            stage.finish(
                lambda split: baselines.predict_proba(pipeline, feature_set.features[split], n_labels),
                LoggedModel(
                    classifier,
                    artifacts={pyfunc.ProbeClassifier.ARTIFACT: folder},
                    packages=("torch", "transformers", "scikit-learn"),
                ),
                registered_model=config.registered_model,
                score_test=score_test,
            )
        return stage.run_id


def _load_features(run_id: str, splits: DatasetSplits) -> features.FeatureSet:
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=extract.FEATURES_ARTIFACT, dst_path=folder
        )
        feature_set = features.load(Path(path))
    for split in features.SPLITS:
        if not np.array_equal(feature_set.labels[split], splits.split(split)["label"].to_numpy()):
            raise UserError(
                f"The features of run {run_id} do not line up with this dataset's {split} labels although the "
                "dataset digests agree; the run's artifacts were changed. Leave --features_run_id empty to "
                "extract anew."
            )
    return feature_set
