"""The stage skeleton: data logged once under a parent, validation-only scoring, a described version."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from emotion_exp.config import DummyConfig
from emotion_exp.stages.skeleton import LoggedModel, Stage, open_stage
from tests.helpers import artifacts
from tests.pyfunc_models import KeywordModel


def _joy_only(stage: Stage) -> Callable[[str], np.ndarray]:
    def probabilities(split: str) -> np.ndarray:
        rows = np.zeros((len(stage.splits.split(split)), len(stage.splits.label_names)))
        rows[:, stage.splits.label_names.index("joy")] = 1.0
        return rows

    return probabilities


def test_a_child_given_the_splits_logs_the_data_but_draws_no_second_label_plot(
    small_dataset: Path, isolated_mlflow: str
) -> None:
    config = DummyConfig(dataset=str(small_dataset))
    with open_stage("main", config) as parent, open_stage("dummy", config, splits=parent.splits) as child:
        child_id = child.run_id

    assert artifacts(parent.run_id) == {"plots/label_distribution.png"}
    assert artifacts(child_id) == set()
    child_run = mlflow.get_run(child_id)
    assert child_run.data.tags["dataset_digest"] == parent.splits.digest
    assert len(child_run.inputs.dataset_inputs) == 3


def test_finish_without_test_scores_validation_only_and_registers_a_described_version(
    small_dataset: Path, isolated_mlflow: str
) -> None:
    name = f"skeleton-{uuid.uuid4().hex[:8]}"
    with open_stage("dummy", DummyConfig(dataset=str(small_dataset))) as stage:
        evaluations = stage.finish(
            _joy_only(stage), LoggedModel(KeywordModel()), registered_model=name, score_test=False
        )

    validation = stage.splits.validation
    joy_share = float((validation["label"] == stage.splits.label_names.index("joy")).mean())
    metrics = mlflow.get_run(stage.run_id).data.metrics
    assert set(evaluations) == {"validation"}
    assert metrics["val_accuracy"] == joy_share
    assert not [m for m in metrics if m.startswith("test_") and m != "test_rows"]  # rows: the data, logged
    assert "reports/classification_report_test.json" not in artifacts(stage.run_id)
    version = MlflowClient().get_model_version(name, "1")
    assert version.tags == {"stage": "dummy", "dataset_digest": stage.splits.digest}
    low, high = metrics["val_accuracy_ci_low"], metrics["val_accuracy_ci_high"]
    assert low < joy_share < high
    assert f"| validation | {joy_share:.3f} [{low:.3f}, {high:.3f}] |" in version.description
