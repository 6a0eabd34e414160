"""The TF-IDF baseline: the pipeline on the bundled sample, the stage and its pyfunc model."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from emotion_exp import baselines, data
from emotion_exp.config import DataConfig, TfidfConfig, subset
from emotion_exp.errors import UserError
from emotion_exp.stages import tfidf
from tests.helpers import LABELS, assert_analysis_logged, scores_of_the_model


def test_tfidf_clearly_beats_the_majority_class_on_the_sample() -> None:
    splits = data.load_splits(DataConfig())
    pipeline = baselines.fit_tfidf(splits.train["text"].tolist(), splits.train["label"].to_numpy())
    accuracy = (pipeline.predict(splits.validation["text"].tolist()) == splits.validation["label"]).mean()
    majority = splits.validation["label"].value_counts(normalize=True).max()
    assert accuracy > majority + 0.3


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_the_tfidf_stage_logs_scores_and_a_text_model_that_loads(small_dataset: Path, isolated_mlflow: str) -> None:
    name = f"tfidf-{uuid.uuid4().hex[:8]}"
    run_id = tfidf.run(TfidfConfig(dataset=str(small_dataset), registered_model=name, class_weight="balanced"))

    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "tfidf" and run.data.tags["registered_version"] == "1"
    assert run.data.params["C"] == "1.0" and run.data.params["class_weight"] == "balanced"
    splits = data.load_splits(subset(TfidfConfig(dataset=str(small_dataset)), DataConfig))
    expected = {
        **scores_of_the_model(f"models:/{name}/1", splits, "validation"),
        **scores_of_the_model(f"models:/{name}/1", splits, "test"),
    }
    assert {m: run.data.metrics[m] for m in expected} == pytest.approx(expected)
    assert run.data.metrics["vocabulary_words"] > 100 and run.data.metrics["vocabulary_chars"] > 1000
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "plots")}
    assert {
        "plots/confusion_matrix_validation.png",
        "plots/confusion_matrix_test.png",
        "plots/label_distribution.png",
    } <= artifacts
    assert len(run.inputs.dataset_inputs) == 3
    assert_analysis_logged(run_id)

    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    texts = ["i feel so happy today", "im scared of what comes next"]
    predictions = model.predict(pd.DataFrame({"text": texts}))
    assert list(predictions.columns) == ["label", *(f"prob_{n}" for n in LABELS)]
    assert set(predictions["label"]) <= set(LABELS)
    np.testing.assert_allclose(predictions.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-6)
    pd.testing.assert_frame_equal(predictions, model.predict(texts))


def test_a_label_with_a_single_train_text_is_refused_with_the_reason() -> None:
    with pytest.raises(UserError, match="needs at least 2 train texts of every label; one label has 1"):
        baselines.fit_tfidf(["i am happy", "so glad", "i am sad"], np.array([0, 0, 1]))
