"""The probe stage: logistic regression on extracted features, logged as a text -> label model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from emotion_exp import baselines, data, features, metrics, models, plots, pyfunc, registry, tracking
from emotion_exp.config import DataConfig, ExtractConfig, ProbeConfig, subset
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.stages import extract


def run(config: ProbeConfig) -> str:
    """Fit the probe on the train features, score validation and test, log the model; return the run id.

    Features come from ``--features_run_id``, else from the newest finished extract run with
    the same data and feature key, else from an extract run nested in this one.
    """
    with tracking.stage_run("probe", config) as run:
        splits = data.load_splits(subset(config, DataConfig))
        tracking.log_dataset(splits)
        tracking.log_figure(
            plots.label_distribution(splits.train["label"], splits.label_names), "plots/label_distribution.png"
        )
        resolved = models.resolve(config.model)
        key = features.feature_key(resolved, config.pooling, config.max_length, config.precision)
        tracking.log_model_source(resolved, key["precision"])
        if config.features_run_id:
            features_run_id = tracking.check_extract_run(config.features_run_id, splits.digest, key)
        else:
            found = tracking.find_extract_run(splits.digest, key)
            features_run_id = found or extract.run(subset(config, ExtractConfig))
        tracking.set_tags({"features_run_id": features_run_id})
        feature_set = _load_features(features_run_id, splits)

        pipeline = baselines.fit_probe(
            feature_set.features["train"],
            feature_set.labels["train"],
            C=config.C,
            class_weight=config.class_weight,
            max_iter=config.max_iter,
            seed=config.seed,
        )
        if not baselines.converged(pipeline, config.max_iter):
            warning = f"The logistic regression did not converge in {config.max_iter} iterations; raise --max_iter."
            tracking.set_tags({"warning": warning})
        for split in ("validation", "test"):
            predicted = pipeline.predict(feature_set.features[split])
            evaluation = metrics.evaluate(feature_set.labels[split], predicted, splits.label_names)
            tracking.log_evaluation(split, evaluation, splits.label_names)
        log_model(pipeline, splits, resolved, config)
        return run.info.run_id


def _load_features(run_id: str, splits: DatasetSplits) -> features.FeatureSet:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(tracking.download_artifact(run_id, tracking.FEATURES_ARTIFACT, folder))
        feature_set = features.load(path)
    for split in features.SPLITS:
        if not np.array_equal(feature_set.labels[split], splits.split(split)["label"].to_numpy()):
            raise UserError(
                f"The features of run {run_id} do not line up with this dataset's {split} labels although the "
                "dataset digests agree; the run's artifacts were changed. Leave --features_run_id empty to "
                "extract anew."
            )
    return feature_set


def log_model(pipeline: object, splits: DatasetSplits, resolved: models.ResolvedModel, config: ProbeConfig) -> str:
    """Log the text -> label pyfunc model (encoder files + pipeline); register it when asked; return its URI."""
    with tempfile.TemporaryDirectory() as folder:
        # save_pretrained writes just what loading needs (also for a hub model, whose location is no folder).
        models.load_tokenizer(resolved).save_pretrained(folder)
        models.load_encoder(resolved).save_pretrained(folder)
        model_uri = pyfunc.log_model(
            pyfunc.ProbeClassifier(
                pipeline,
                splits.label_names,
                pooling=config.pooling,
                max_length=config.max_length,
                batch_size=config.batch_size,
                # bf16 and fp32 features agree to about 1e-2, so the loading machine picks what it runs natively.
                precision="auto",
            ),
            splits.label_names,
            artifacts={pyfunc.ProbeClassifier.ARTIFACT: folder},
            packages=("torch", "transformers", "scikit-learn"),
        )
    if config.registered_model:
        version = registry.register(model_uri, config.registered_model)
        tracking.set_tags({"registered_model": config.registered_model, "registered_version": version})
    return model_uri
