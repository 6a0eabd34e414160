"""The TF-IDF stage: word and character n-grams with a linear SVM on raw text, the classic bar."""

from __future__ import annotations

from emotion_exp import baselines, data, metrics, plots, pyfunc, registry, tracking
from emotion_exp.config import DataConfig, TfidfConfig, subset


def run(config: TfidfConfig) -> str:
    """Fit on train, score validation and test, log the text -> label model; return the run id."""
    with tracking.stage_run("tfidf", config) as run:
        splits = data.load_splits(subset(config, DataConfig))
        tracking.log_dataset(splits)
        tracking.log_figure(
            plots.label_distribution(splits.train["label"], splits.label_names), "plots/label_distribution.png"
        )
        pipeline = baselines.fit_tfidf(
            splits.train["text"].tolist(),
            splits.train["label"].to_numpy(),
            C=config.C,
            class_weight=config.class_weight,
            seed=config.seed,
        )
        vectorizers = pipeline["tfidf"].transformer_list
        tracking.log_metrics({f"vocabulary_{name}": len(step.vocabulary_) for name, step in vectorizers})
        for split in ("validation", "test"):
            frame = splits.split(split)
            evaluation = metrics.evaluate(frame["label"], pipeline.predict(frame["text"].tolist()), splits.label_names)
            tracking.log_evaluation(split, evaluation, splits.label_names)
        model_uri = pyfunc.log_model(
            pyfunc.TextPipelineClassifier(pipeline, splits.label_names), splits.label_names, packages=("scikit-learn",)
        )
        if config.registered_model:
            version = registry.register(model_uri, config.registered_model)
            tracking.set_tags({"registered_model": config.registered_model, "registered_version": version})
        return run.info.run_id
