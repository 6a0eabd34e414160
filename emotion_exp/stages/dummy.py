"""The dummy stage: the floor every model must beat."""

from __future__ import annotations

from emotion_exp import baselines, data, metrics, plots, tracking
from emotion_exp.config import DataConfig, DummyConfig, subset


def run(config: DummyConfig) -> str:
    """Fit ``DummyClassifier`` on train, log validation and test scores; return the run id."""
    with tracking.stage_run("dummy", config) as run:
        splits = data.load_splits(subset(config, DataConfig))
        tracking.log_dataset(splits)
        tracking.log_figure(
            plots.label_distribution(splits.train["label"], splits.label_names),
            "plots/label_distribution.png",
        )
        model = baselines.fit_dummy(splits.train["label"].to_numpy(), strategy=config.strategy, seed=config.seed)
        for split in ("validation", "test"):
            frame = splits.split(split)
            evaluation = metrics.evaluate(frame["label"], model.predict(frame[["text"]]), splits.label_names)
            tracking.log_evaluation(split, evaluation, splits.label_names)
        return run.info.run_id
