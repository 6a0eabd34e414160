"""Repeated seeds: nested runs per seed, the spread on the parent, the best seed's model, and seedless stages."""

from __future__ import annotations

import importlib
import statistics
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import baselines, catalog
from emotion_exp.cli import cli
from emotion_exp.config import DataConfig, FinetuneConfig, TfidfConfig
from emotion_exp.data import load_splits
from emotion_exp.errors import UserError
from emotion_exp.stages import finetune
from tests.helpers import tiny_finetune_config


@pytest.mark.parametrize(
    ("seeds", "expected"), [("", [42]), ("1", [42]), ("3", [42, 43, 44]), ("11, 12,13", [11, 12, 13])]
)
def test_seeds_are_a_count_from_seed_or_a_list(seeds: str, expected: list[int]) -> None:
    assert FinetuneConfig(seeds=seeds).seed_list() == expected


@pytest.mark.parametrize("seeds", ["0", "x", "1,1", "3,-1", "2.5"])
def test_bad_seeds_are_refused_before_any_work(seeds: str) -> None:
    with pytest.raises(UserError, match="--seeds"):
        TfidfConfig(seeds=seeds)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("4294967296", "--seeds as a count must be from 1 to 100; got '4294967296'."),
        ("101", "--seeds as a count must be from 1 to 100; got '101'."),
        (",".join(map(str, range(101))), "--seeds lists at most 100 seeds; got 101."),
    ],
)
def test_the_number_of_seeds_is_bounded(seeds: str, message: str) -> None:
    # Each seed is a training run: 2**32 of them ended in a MemoryError while the list was built.
    with pytest.raises(UserError) as refused:
        TfidfConfig(seeds=seeds)
    assert str(refused.value) == message
    assert len(TfidfConfig(seeds="100").seed_list()) == 100
    result = CliRunner().invoke(cli, ["tfidf", "--seeds", seeds])
    assert result.exit_code != 0 and result.output.strip().splitlines() == [f"Error: {message}"]


def nested_runs(parent_id: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


@pytest.mark.slow
def test_finetune_with_three_seeds_summarises_them_and_keeps_the_best_seeds_model(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, isolated_mlflow: str
) -> None:
    name = f"seeds-{uuid.uuid4().hex[:8]}"
    config = tiny_finetune_config(small_dataset, tiny_model_dir, tmp_path, seeds="3", registered_model=name)
    parent_id = finetune.run(config)

    parent = mlflow.get_run(parent_id)
    children = nested_runs(parent_id)
    assert parent.data.tags["stage"] == "finetune" and parent.data.tags["seeds"] == "42,43,44"
    assert [c.data.params["seed"] for c in children] == ["42", "43", "44"]
    assert all(c.data.tags["stage"] == "finetune" and c.info.status == "FINISHED" for c in children)
    # The same data for every seed; the seed changes the model (head, order, dropout): other probabilities.
    assert len({c.data.tags["dataset_digest"] for c in children}) == 1
    tables = [
        pd.read_parquet(
            mlflow.artifacts.download_artifacts(run_id=c.info.run_id, artifact_path="predictions/per_text.parquet")
        )
        for c in children
    ]
    assert not np.allclose(tables[0].filter(like="prob_").to_numpy(), tables[1].filter(like="prob_").to_numpy())

    for metric in ("val_accuracy", "val_f1_weighted", "test_accuracy", "val_loss"):
        values = [c.data.metrics[metric] for c in children]
        assert parent.data.metrics[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert parent.data.metrics[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
        assert parent.data.metrics[f"{metric}_min"] == min(values)
        assert parent.data.metrics[f"{metric}_max"] == max(values)
    assert parent.data.metrics["seeds_count"] == 3

    # The best seed by validation only; the parent carries its scores, intervals, predictions and model.
    best = max(children, key=lambda c: c.data.metrics["val_f1_weighted"])
    assert parent.data.tags["best_seed_run_id"] == best.info.run_id
    assert parent.data.tags["best_seed"] == best.data.params["seed"]
    for metric in ("val_accuracy", "val_accuracy_ci_low", "test_f1_weighted"):
        assert parent.data.metrics[metric] == best.data.metrics[metric]
    parent_predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="predictions/per_text.parquet")
    )
    pd.testing.assert_frame_equal(parent_predictions, tables[children.index(best)])
    [output] = parent.outputs.model_outputs
    assert mlflow.get_logged_model(output.model_id).source_run_id == best.info.run_id
    version = MlflowClient().get_model_version(name, "1")
    assert version.run_id == best.info.run_id and version.tags["seed"] == best.data.params["seed"]
    per_seed = mlflow.artifacts.load_text(f"runs:/{parent_id}/seeds/per_seed.md")
    assert all(c.info.run_id in per_seed for c in children)


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_seedless_stage_says_so_and_fits_once(small_dataset: Path, isolated_mlflow: str) -> None:
    result = CliRunner().invoke(cli, ["tfidf", "--dataset", str(small_dataset), "--seeds", "3"])
    assert result.exit_code == 0, result.output
    assert (
        "tfidf: --seeds 3 would repeat one fit 3 times: its linear SVM solves a strictly convex problem"
        in result.output
    )
    [run] = mlflow.search_runs(output_format="list")
    assert run.data.tags["seeds_note"].startswith("one fit for 3 seeds: ")


def test_the_seed_changes_neither_the_tfidf_nor_a_seedless_heads_fit(small_dataset: Path) -> None:
    # The claim behind the seedless entries of catalog.STAGES, checked: two seeds, the same fitted coefficients.
    splits = load_splits(DataConfig(dataset=str(small_dataset)))
    texts, labels = splits.train["text"].tolist(), splits.train["label"].to_numpy()
    first, second = (baselines.fit_tfidf(texts, labels, seed=seed) for seed in (1, 2))
    validation = splits.validation["text"].tolist()
    # The same optimum up to the solver's tolerance: probabilities 3e-6 apart on the sample, the same labels.
    np.testing.assert_allclose(first.predict_proba(validation), second.predict_proba(validation), atol=1e-4)
    np.testing.assert_array_equal(first.predict(validation), second.predict(validation))

    features = np.random.default_rng(0).normal(size=(len(labels), 16))
    heads = [name for name, spec in catalog.STAGES.items() if spec.seedless and spec.reads_features]
    assert heads, "no seedless feature head: this test checks nothing"
    for name in heads:  # every feature head that claims it: its classifier fitted with two seeds
        head = importlib.import_module(catalog.STAGES[name].module).head
        fitted = [baselines.fit_head(head(catalog.STAGES[name].config(seed=seed)), features, labels) for seed in (1, 2)]
        np.testing.assert_array_equal(fitted[0].predict_proba(features), fitted[1].predict_proba(features), name)


@pytest.mark.slow
def test_the_study_with_seeds_shows_the_spread_per_stage(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str
) -> None:
    arguments = ["main", "--dataset", str(small_dataset), "--model", str(tiny_model_dir), "--seeds", "2"]
    arguments += ["--epochs", "1", "--max_length", "32", "--batch_size", "16", "--umap_max_points", "100"]
    result = CliRunner().invoke(cli, [*arguments, "--registered_model", ""])
    assert result.exit_code == 0, result.output
    [parent] = [r for r in mlflow.search_runs(output_format="list") if r.data.tags["stage"] == "main"]
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="comparison/comparison.csv")
    ).set_index("stage")
    finetune_run = mlflow.get_run(table.loc["finetune", "run_id"])
    seed_runs = nested_runs(finetune_run.info.run_id)
    assert len(seed_runs) == 2
    accuracies = [r.data.metrics["val_accuracy"] for r in seed_runs]
    assert table.loc["finetune", "val_accuracy_mean"] == pytest.approx(statistics.fmean(accuracies))
    assert table.loc["finetune", "val_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    assert table.loc["probe", "seeds_note"].startswith("one fit for 2 seeds")
    summary = result.output[result.output.index("Study finished in ") :]
    assert "val accuracy over seeds" in summary
    [finetune_line] = [line for line in summary.splitlines() if line.startswith("finetune ")]
    assert f"{statistics.fmean(accuracies):.3f} ± {statistics.stdev(accuracies):.3f} over 2 seeds" in finetune_line
    [probe_line] = [line for line in summary.splitlines() if line.startswith("probe ")]
    assert "one fit (the seed changes nothing)" in probe_line
