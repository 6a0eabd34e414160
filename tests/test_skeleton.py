"""The stage skeleton: data logged once under a parent, validation-only scoring, a described version."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import data
from emotion_exp.cli import cli
from emotion_exp.config import DataConfig, DummyConfig
from emotion_exp.data import TrainOverlap
from emotion_exp.stages import dummy
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


def leaky_copy(small_dataset: Path, folder: Path, test_rows: int) -> Path:
    """The small dataset with the first ``test_rows`` test rows appended to train."""
    folder.mkdir()
    for split in ("validation", "test"):
        shutil.copy(small_dataset / f"{split}.csv", folder / f"{split}.csv")
    train, test = (pd.read_csv(small_dataset / f"{split}.csv") for split in ("train", "test"))
    pd.concat([train, test.head(test_rows)]).to_csv(folder / "train.csv", index=False)
    return folder


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_test_texts_in_train_are_counted_tagged_and_warned_about_once(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_rows = len(pd.read_csv(small_dataset / "test.csv"))
    leaky = leaky_copy(small_dataset, tmp_path / "leaky", test_rows)

    result = CliRunner().invoke(cli, ["dummy", "--dataset", str(leaky)])

    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if "warning" in line]
    assert warning.startswith(f"dummy: warning: {test_rows} of {test_rows} test texts (100%) are also in train")
    [run] = mlflow.search_runs(output_format="list")
    assert run.data.tags["train_overlap"] == f"validation 0/40, test {test_rows}/{test_rows}"
    assert (run.data.metrics["train_overlap_val"], run.data.metrics["train_overlap_test"]) == (0, test_rows)

    # A stage handed the splits (a study's child) records the overlap on its run; only the loader warns.
    splits = data.load_splits(DataConfig(dataset=str(leaky)))
    capsys.readouterr()
    child = dummy.run(DummyConfig(dataset=str(leaky)), splits=splits)
    assert "warning" not in capsys.readouterr().out
    assert mlflow.get_run(child).data.metrics["train_overlap_test"] == test_rows


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_clean_splits_and_a_few_shared_texts_tag_without_a_warning(small_dataset: Path, tmp_path: Path) -> None:
    clean = CliRunner().invoke(cli, ["dummy", "--dataset", str(small_dataset)])
    few = CliRunner().invoke(cli, ["dummy", "--dataset", str(leaky_copy(small_dataset, tmp_path / "few", 0))])

    assert clean.exit_code == few.exit_code == 0, clean.output + few.output
    assert "warning" not in clean.output + few.output
    tags = {run.data.tags["train_overlap"] for run in mlflow.search_runs(output_format="list")}
    assert tags == {"validation 0/40, test 0/40"}


def test_the_warning_starts_above_one_percent_of_a_split() -> None:
    def overlap(count: int) -> TrainOverlap:
        return TrainOverlap({"validation": 0, "test": count}, {"validation": 200, "test": 200})

    assert overlap(2).warning() is None  # 1%: a few duplicates, common in collected data
    assert overlap(3).warning().startswith("3 of 200 test texts (2%) are also in train")
    both = TrainOverlap({"validation": 10, "test": 200}, {"validation": 200, "test": 200}).warning()
    assert both.startswith("10 of 200 validation texts (5%) and 200 of 200 test texts (100%) are also in train")
