"""The dummy stage: the floor every model must beat."""

from __future__ import annotations

from collections.abc import Sequence

from emotion_exp import baselines
from emotion_exp.config import DummyConfig
from emotion_exp.data import DatasetSplits
from emotion_exp.stages.skeleton import open_stage
from emotion_exp.tracking import RunLabels


def run(
    config: DummyConfig,
    *,
    splits: DatasetSplits | None = None,
    train_rows: Sequence[int] | None = None,
    score_test: bool = True,
    labels: RunLabels | None = None,
) -> str:
    """Fit ``DummyClassifier`` on train, log validation and test scores; return the run id (``catalog.StageRun``)."""
    with open_stage("dummy", config, splits=splits, train_rows=train_rows, labels=labels) as stage:
        splits = stage.splits
        model = baselines.fit_dummy(splits.train["label"].to_numpy(), strategy=config.strategy, seed=config.seed)
        n_labels = len(splits.label_names)
        stage.finish(
            lambda split: baselines.predict_proba(model, splits.split(split)[["text"]], n_labels), score_test=score_test
        )
        return stage.run_id
