"""compare: two runs on the same texts, checked against a count by hand; other data and missing predictions refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from emotion_exp.cli import cli
from emotion_exp.config import CompareConfig, DummyConfig, TfidfConfig
from emotion_exp.errors import UserError
from emotion_exp.stages import compare, dummy, tfidf


def predictions(run_id: str) -> pd.DataFrame:
    return pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/per_text.parquet")
    )


def by_hand(run_a: str, run_b: str, split: str) -> tuple[float, float, int, int, float]:
    """Accuracy and weighted F1 differences, the two discordant counts and McNemar's exact p, from the artifacts."""
    a, b = (t[t["split"] == split].sort_values("row") for t in (predictions(run_a), predictions(run_b)))
    a_right, b_right = (a["gold"] == a["predicted"]).to_numpy(), (b["gold"] == b["predicted"]).to_numpy()
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    f1_delta = f1_score(a["gold"], a["predicted"], average="weighted") - f1_score(
        b["gold"], b["predicted"], average="weighted"
    )
    return a_right.mean() - b_right.mean(), f1_delta, only_a, only_b, binomtest(only_a, only_a + only_b).pvalue


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_two_runs_are_compared_text_by_text_on_validation_and_test(
    small_dataset: Path, registered_tfidf: tuple[str, str]
) -> None:
    _, strong = registered_tfidf  # a TF-IDF run of the small data, in another experiment
    floor = dummy.run(DummyConfig(dataset=str(small_dataset)))
    result = CliRunner().invoke(cli, ["compare", strong, floor])
    assert result.exit_code == 0, result.output

    [run] = [r for r in mlflow.search_runs(output_format="list") if r.data.tags["stage"] == "compare"]
    assert (run.data.tags["compared_run_a"], run.data.tags["compared_run_b"]) == (strong, floor)
    for split, prefix in (("validation", "val"), ("test", "test")):
        delta, f1_delta, only_a, only_b, pvalue = by_hand(strong, floor, split)
        assert run.data.metrics[f"{prefix}_accuracy_delta"] == pytest.approx(delta)
        assert run.data.metrics[f"{prefix}_f1_weighted_delta"] == pytest.approx(f1_delta)
        assert (run.data.metrics[f"{prefix}_only_a_right"], run.data.metrics[f"{prefix}_only_b_right"]) == (
            only_a,
            only_b,
        )
        assert run.data.metrics[f"{prefix}_mcnemar_pvalue"] == pytest.approx(pvalue)
        low, high = (
            run.data.metrics[f"{prefix}_accuracy_delta_ci_low"],
            run.data.metrics[f"{prefix}_accuracy_delta_ci_high"],
        )
        assert low <= delta <= high
        assert (
            run.data.metrics[f"{prefix}_f1_weighted_delta_ci_low"]
            <= f1_delta
            <= run.data.metrics[f"{prefix}_f1_weighted_delta_ci_high"]
        )
    assert "| validation |" in result.output and "McNemar p" in result.output
    *_, validation_p = by_hand(strong, floor, "validation")
    expected = "is more accurate than" if validation_p < 0.05 else "is within what chance alone makes on 40 texts"
    assert expected in result.output.rstrip().splitlines()[-1]
    report = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/compare/comparison.md")
    assert run.data.tags["compare_verdict"] in report


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_model_uris_and_a_studys_stages_name_the_runs(small_dataset: Path, isolated_mlflow: str) -> None:
    name = f"compare-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run(run_name="main", tags={"stage": "main"}) as parent:
        floor = dummy.run(DummyConfig(dataset=str(small_dataset)))
        strong = tfidf.run(TfidfConfig(dataset=str(small_dataset), registered_model=name))
    assert compare.resolve_pair(CompareConfig(run_a=f"models:/{name}/1", run_b=floor)) == (strong, floor)
    assert compare.resolve_pair(CompareConfig(parent=parent.info.run_id)) == (strong, floor)  # the two best
    assert compare.resolve_pair(CompareConfig(run_a="dummy", run_b="tfidf", parent=parent.info.run_id)) == (
        floor,
        strong,
    )
    assert compare.resolve_pair(CompareConfig(run_a="dummy", parent=parent.info.run_id)) == (floor, strong)
    assert compare.resolve_pair(CompareConfig(run_a="tfidf", parent=parent.info.run_id)) == (strong, floor)
    with pytest.raises(UserError, match="has no scored stage 'probe'; its stages: dummy, tfidf"):
        compare.resolve_pair(CompareConfig(run_a="probe", run_b="tfidf", parent=parent.info.run_id))


def test_runs_on_other_data_are_refused_naming_both_digests(
    small_dataset: Path, registered_tfidf: tuple[str, str]
) -> None:
    _, whole = registered_tfidf
    capped = dummy.run(DummyConfig(dataset=str(small_dataset), max_samples=60))
    digests = [MlflowClient().get_run(r).data.tags["dataset_digest"][:12] for r in (whole, capped)]
    result = CliRunner().invoke(cli, ["compare", whole, capped])
    assert result.exit_code == 1
    assert f"dataset digests {digests[0]} and {digests[1]}" in result.output
    assert not [r for r in mlflow.search_runs(output_format="list") if r.data.tags["stage"] == "compare"]


def test_a_run_without_predictions_or_runs_is_refused(small_dataset: Path, isolated_mlflow: str) -> None:
    scored = dummy.run(DummyConfig(dataset=str(small_dataset)))
    digest = MlflowClient().get_run(scored).data.tags["dataset_digest"]
    with mlflow.start_run(tags={"dataset_digest": digest}) as bare:
        pass
    with pytest.raises(UserError, match=rf"Run {bare.info.run_id} has no per-text predictions"):
        compare.run(CompareConfig(run_a=scored, run_b=bare.info.run_id))
    with pytest.raises(UserError, match="neither a run id"):
        compare.run(CompareConfig(run_a=scored, run_b="../x"))
    with pytest.raises(UserError, match="compare needs two runs"):
        CompareConfig(run_a=scored)


@pytest.mark.parametrize("second", ["{run}", "runs:/{run}/model"])
@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_run_compared_with_itself_is_a_mistake_in_one_line(small_dataset: Path, second: str) -> None:
    scored = dummy.run(DummyConfig(dataset=str(small_dataset)))
    result = CliRunner().invoke(cli, ["compare", scored, second.format(run=scored)], env={"EMOTION_EXP_DEBUG": None})

    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: '{scored}' and '{second.format(run=scored)}' are the same run, {scored}:")
    assert "unexpected" not in line
    assert [r.data.tags["stage"] for r in mlflow.search_runs(output_format="list")] == ["dummy"]


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_deleted_run_is_named_as_deleted(small_dataset: Path) -> None:
    kept, deleted = (dummy.run(DummyConfig(dataset=str(small_dataset))) for _ in range(2))
    MlflowClient().delete_run(deleted)

    result = CliRunner().invoke(cli, ["compare", kept, deleted])

    assert result.exit_code == 1
    assert f"Error: Run {deleted} is deleted" in result.output
    assert f"mlflow runs restore --run-id {deleted}" in result.output
