"""The feature-head family: the encoder's pooled features plus any scikit-learn classifier (setfit's body + head).

A feature-head stage is its head only: ``head(config)``, an unfitted scikit-learn classifier
built from the stage's config (a ``config.FeatureHeadConfig``), and ``run = stage(name, head)``.
Everything else happens here, once for every head:

- the features: ``--features_run_id``, else the newest finished extract run of the same data and
  feature key (model, pooling, max_length, resolved precision and runtime), else an extract run
  nested in this one;
- the fit on the training rows (``train_rows``: a learning-curve point reuses the features of the
  whole split), one BLAS thread (``baselines.fit_head``);
- the scores on validation and test, and one text -> label model for every head
  (``pyfunc.ProbeClassifier``: the encoder and its pooling, then the fitted pipeline), registered
  where asked; ``--seeds`` repeats the whole (``stages.seeds``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
import numpy as np

from emotion_exp import baselines, engine, features, models, pyfunc
from emotion_exp.catalog import StageRun
from emotion_exp.config import ExtractConfig, FeatureHeadConfig, subset
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.models import ResolvedModel
from emotion_exp.stages import extract, seeds
from emotion_exp.stages.skeleton import LoggedModel, Stage, log_model_source, open_stage
from emotion_exp.tracking import RunLabels

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

HeadConfig = TypeVar("HeadConfig", bound=FeatureHeadConfig)


def stage(
    name: str,
    head: Callable[[HeadConfig], Any],
    *,
    review: Callable[[HeadConfig, Any], str | None] | None = None,
) -> StageRun[HeadConfig]:
    """The ``run`` of the feature-head stage ``name``, whose classifier is ``head(config)``.

    ``review(config, fitted)`` looks at the fitted classifier before it is scored: it returns a
    warning for the run's ``warning`` tag (the probe's solver did not converge) or None, and
    raises ``UserError`` where the classifier cannot predict (more neighbours than texts).
    """

    def run(
        config: HeadConfig,
        *,
        splits: DatasetSplits | None = None,
        train_rows: Sequence[int] | None = None,
        score_test: bool = True,
        labels: RunLabels | None = None,
    ) -> str:
        if seeds.repeated(config):
            return seeds.run(
                name, config, run, splits=splits, train_rows=train_rows, score_test=score_test, labels=labels
            )
        with open_stage(name, config, splits=splits, train_rows=train_rows, labels=labels) as opened:
            resolved = models.resolve(config.model)
            tokenizer, encoder = models.load_tokenizer(resolved), models.load_encoder(resolved)
            feature_set = features_for(opened, config, resolved, features.model_digest(tokenizer, encoder))
            rows = slice(None) if train_rows is None else np.asarray(train_rows)
            classifier = head(config)
            pipeline = baselines.fit_head(
                classifier, feature_set.features["train"][rows], feature_set.labels["train"][rows]
            )
            warning = review(config, classifier) if review is not None else None
            if warning:
                mlflow.set_tag("warning", warning)
            label_names = opened.splits.label_names
            with tempfile.TemporaryDirectory() as folder:
                opened.finish(
                    lambda split: baselines.predict_proba(pipeline, feature_set.features[split], len(label_names)),
                    text_model(pipeline, config, tokenizer, encoder, label_names, folder),
                    registered_model=config.registered_model,
                    score_test=score_test,
                )
            return opened.run_id

    run.__doc__ = (
        f"Fit the {name} head on the train features, score validation and test, log the text -> label model; "
        "return the run id (``catalog.StageRun``)."
    )
    return run


def features_for(
    opened: Stage, config: FeatureHeadConfig, resolved: ResolvedModel, model_digest: str
) -> features.FeatureSet:
    """The features of every split of the stage's data, found or extracted; the run is tagged with their run.

    ``model_digest`` (``features.model_digest``) keys them by the encoder's weights and tokenizer, not its path.
    """
    splits = opened.full_splits
    chosen = engine.resolve(config.runtime, config.precision, config.threads)  # the extract stage tags why
    key = features.feature_key(resolved, config.pooling, config.max_length, chosen, model_digest)
    log_model_source(resolved, key["precision"])
    if config.features_run_id:
        features_run_id = extract.check_extract_run(config.features_run_id, splits.digest, key)
    else:
        found = extract.find_extract_run(splits.digest, key)
        features_run_id = found or extract.run(subset(config, ExtractConfig), splits=splits)
    mlflow.set_tag("features_run_id", features_run_id)
    return load_features(features_run_id, splits)


def load_features(run_id: str, splits: DatasetSplits) -> features.FeatureSet:
    """The features an extract run logged, checked to line up with ``splits`` text by text."""
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


def text_model(
    pipeline: Any,
    config: FeatureHeadConfig,
    tokenizer: PreTrainedTokenizerBase,
    encoder: PreTrainedModel,
    label_names: Sequence[str],
    folder: str,
) -> LoggedModel:
    """The pyfunc model of a fitted head: the encoder and tokenizer saved into ``folder``, then the pipeline."""
    # save_pretrained writes just what loading needs (also for a hub model, whose location is no folder).
    tokenizer.save_pretrained(folder)
    encoder.save_pretrained(folder)
    classifier = pyfunc.ProbeClassifier(
        pipeline,
        label_names,
        pooling=config.pooling,
        max_length=config.max_length,
        batch_size=config.batch_size,
        precision=config.precision,  # as asked: auto resolves on the machine that loads the model
    )
    return LoggedModel(
        classifier,
        artifacts={pyfunc.ProbeClassifier.ARTIFACT: folder},
        packages=("torch", "transformers", "scikit-learn"),
    )
