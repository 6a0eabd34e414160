"""The TF-IDF stage: word and character n-grams with a linear SVM on raw text, the classic bar."""

from __future__ import annotations

from collections.abc import Sequence

import mlflow

from emotion_exp import baselines, pyfunc
from emotion_exp.config import TfidfConfig
from emotion_exp.data import DatasetSplits
from emotion_exp.stages import seeds
from emotion_exp.stages.skeleton import LoggedModel, open_stage
from emotion_exp.tracking import RunLabels


def run(
    config: TfidfConfig,
    *,
    splits: DatasetSplits | None = None,
    train_rows: Sequence[int] | None = None,
    score_test: bool = True,
    labels: RunLabels | None = None,
) -> str:
    """Fit on train, score validation and test, log the text -> label model; return the run id.

    The arguments are every model stage's (``catalog.StageRun``); ``--seeds`` trains once
    (``catalog.StageSpec.seedless``).
    """
    if seeds.repeated(config):
        return seeds.run(
            "tfidf", config, run, splits=splits, train_rows=train_rows, score_test=score_test, labels=labels
        )
    with open_stage("tfidf", config, splits=splits, train_rows=train_rows, labels=labels) as stage:
        splits = stage.splits
        pipeline = baselines.fit_tfidf(
            splits.train["text"].tolist(),
            splits.train["label"].to_numpy(),
            C=config.C,
            class_weight=config.class_weight,
            seed=config.seed,
        )
        vectorizers = pipeline["tfidf"].transformer_list
        mlflow.log_metrics({f"vocabulary_{name}": len(step.vocabulary_) for name, step in vectorizers})
        n_labels = len(splits.label_names)
        stage.finish(
            lambda split: baselines.predict_proba(pipeline, splits.split(split)["text"].tolist(), n_labels),
            LoggedModel(pyfunc.TextPipelineClassifier(pipeline, splits.label_names), packages=("scikit-learn",)),
            registered_model=config.registered_model,
            score_test=score_test,
        )
        return stage.run_id
