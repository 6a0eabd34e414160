"""The main entry point: the whole study as nested runs of one parent, compared on the parent."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from emotion_exp.cli import cli
from tests.helpers import STAGES, mlflow_run, study_params

COMPARED = ["extract", "dummy", "probe", "tfidf", "finetune"]


def check_study(experiment: str, registered_model: str) -> mlflow.entities.Run:
    """The parent and its children in the store, the comparison on the parent and the champion."""
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    [parent] = [r for r in runs if r.data.tags.get("stage") == "main"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["stage"] for r in children} == STAGES
    assert all(r.info.status == "FINISHED" for r in children)
    assert len(parent.data.tags["dataset_digest"]) == 64
    trained = [r for r in children if r.data.tags["stage"] != "evaluate"]
    assert {r.data.tags.get("dataset_digest") for r in trained} == {parent.data.tags["dataset_digest"]}

    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert artifacts == {"comparison/comparison.md", "comparison/comparison.csv"}
    assert "plots/comparison.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="comparison/comparison.csv")
    )
    assert [s for s in table["stage"] if s in COMPARED] == [s for s in COMPARED if s in set(table["stage"])]
    assert {"dummy", "probe", "tfidf", "finetune"} <= set(table["stage"])
    markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/comparison/comparison.md")
    assert "| finetune" in markdown and "val_f1_weighted" in markdown
    check_paired_comparison(table, parent)
    for stage in ("dummy", "probe", "tfidf", "finetune"):
        assert 0 <= parent.data.metrics[f"{stage}_val_accuracy"] <= 1
        assert 0 <= parent.data.metrics[f"{stage}_val_f1_weighted"] <= 1

    champion = client.get_model_version_by_alias(registered_model, "champion")
    # main ends with an evaluate of the new champion on the study's test split, reported on the parent.
    [evaluated] = [r for r in children if r.data.tags["stage"] == "evaluate"]
    assert evaluated.data.tags["registered_version"] == str(champion.version)
    assert evaluated.data.metrics["test_rows"] == len(pd.read_csv(Path(parent.data.params["dataset"]) / "test.csv"))
    assert parent.data.tags["champion_evaluation"] == evaluated.info.run_id
    for metric in ("test_accuracy", "test_f1_weighted", "test_loss", "test_ece", "test_brier"):
        assert parent.data.metrics[f"champion_{metric}"] == evaluated.data.metrics[metric]
    [trained_champion] = [r for r in children if r.info.run_id == champion.run_id]
    assert evaluated.data.metrics["test_accuracy"] == pytest.approx(trained_champion.data.metrics["test_accuracy"])
    candidates = {r.info.run_id for r in children if r.data.tags["stage"] in ("probe", "tfidf", "finetune")}
    assert champion.run_id in candidates
    [promote_run] = [r for r in children if r.data.tags["stage"] == "promote"]
    assert promote_run.data.params["candidate_run_id"] == champion.run_id
    return parent


def check_paired_comparison(table: pd.DataFrame, parent: mlflow.entities.Run) -> None:
    """Every model stage against the best other one, recomputed by hand from the two runs' per-text predictions."""
    by_stage = table.set_index("stage")
    models = ["dummy", "probe", "tfidf", "finetune"]
    for stage in models:
        row = by_stage.loc[stage]
        others = {other: by_stage.loc[other, "val_accuracy"] for other in models if other != stage}
        assert row["versus"] == max(others, key=others.get)
        assert row["val_accuracy_ci_low"] <= row["val_accuracy"] <= row["val_accuracy_ci_high"]
        assert parent.data.tags[f"{stage}_versus"] == row["versus"]
        mine, theirs = (
            pd.read_parquet(
                mlflow.artifacts.download_artifacts(
                    run_id=by_stage.loc[name, "run_id"], artifact_path="predictions/per_text.parquet"
                )
            )
            for name in (stage, row["versus"])
        )
        for split, prefix in (("validation", "val"), ("test", "test")):
            a, b = (t[t["split"] == split].sort_values("row") for t in (mine, theirs))
            a_right = (a["gold"] == a["predicted"]).to_numpy()
            b_right = (b["gold"] == b["predicted"]).to_numpy()
            only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
            expected_p = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b).pvalue
            assert row[f"{prefix}_accuracy_delta"] == pytest.approx(a_right.mean() - b_right.mean())
            assert row[f"{prefix}_mcnemar_pvalue"] == pytest.approx(expected_p)
            assert row[f"{prefix}_accuracy_delta_ci_low"] <= row[f"{prefix}_accuracy_delta"]
            assert row[f"{prefix}_accuracy_delta"] <= row[f"{prefix}_accuracy_delta_ci_high"]
            assert parent.data.metrics[f"{stage}_{prefix}_mcnemar_pvalue"] == pytest.approx(expected_p)


@pytest.mark.slow
def test_main_runs_every_stage_as_children_and_compares_them(small_dataset, tiny_model_dir, isolated_mlflow) -> None:
    name = f"study-{uuid.uuid4().hex[:8]}"
    arguments = ["main"]
    for key, value in study_params(small_dataset, tiny_model_dir, name).items():
        arguments += [f"--{key}", value]

    result = CliRunner().invoke(cli, arguments)

    assert result.exit_code == 0, result.output
    parent = check_study(isolated_mlflow, name)
    summary = result.output[result.output.index("Study finished in ") :]
    assert f"run {parent.info.run_id} in experiment {isolated_mlflow!r}" in summary
    assert f"(models:/{name}@champion)" in summary and "Open it: mlflow ui --backend-store-uri sqlite:///" in summary


@pytest.mark.slow
def test_mlflow_run_dot_is_the_whole_study(small_dataset, tiny_model_dir, tracking_uri, isolated_mlflow) -> None:
    name = f"study-{uuid.uuid4().hex[:8]}"
    params = [f"{k}={v}" for k, v in study_params(small_dataset, tiny_model_dir, name).items()]

    result = mlflow_run("main", isolated_mlflow, tracking_uri, *params, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    parent = check_study(isolated_mlflow, name)
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
