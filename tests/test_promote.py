"""promote against a real MLflow store: runs that log a small real pyfunc model, then the registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from emotion_exp import data, metrics, registry, significance
from emotion_exp.cli import cli
from emotion_exp.config import DataConfig, PromoteConfig
from emotion_exp.errors import UserError
from emotion_exp.registry import Candidate, Champion
from emotion_exp.stages import promote
from emotion_exp.stages.skeleton import log_table
from tests.pyfunc_models import LABELS, log_keyword_model

NAME = "emotion-classifier"
pytestmark = pytest.mark.filterwarnings("ignore:An input example was not provided")


@pytest.fixture(scope="module")
def digest(small_dataset: Path) -> str:
    return data.load_splits(DataConfig(dataset=str(small_dataset))).digest


@pytest.fixture
def config(small_dataset: Path) -> PromoteConfig:
    # These runs log hand-set scores beside one keyword model, so they test the registry mechanics
    # under the strict rule; the default rule, which tests the models' own predictions, is tested below.
    return PromoteConfig(dataset=str(small_dataset), rule="better")


def make_run(
    digest: str,
    val_f1_weighted: float | None,
    *,
    val_accuracy: float = 0.5,
    model: bool = True,
    status: str = "FINISHED",
    stage: str = "finetune",
) -> str:
    """A stage-like run: the dataset_digest tag, validation scores and (optionally) a logged model."""
    with mlflow.start_run(run_name=stage) as run:
        mlflow.set_tags({"stage": stage, "dataset_digest": digest})
        metrics = {"val_accuracy": val_accuracy}
        if val_f1_weighted is not None:
            metrics["val_f1_weighted"] = val_f1_weighted
        mlflow.log_metrics(metrics)
        if model:
            log_keyword_model(input_example=False)
        mlflow.end_run(status)
    return run.info.run_id


def champion_run() -> str:
    client = MlflowClient()
    return client.get_model_version_by_alias(NAME, "champion").run_id


def versions() -> list[str]:
    return sorted(v.run_id for v in MlflowClient().search_model_versions(f"name = '{NAME}'"))


def promote_runs(experiment: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.stage = 'promote'",
        output_format="list",
        order_by=["attributes.start_time ASC"],
    )


@pytest.fixture(autouse=True)
def fresh_registered_model():
    """The store is shared by the session: every test starts without the registered model."""
    client = MlflowClient()
    for model in client.search_registered_models(f"name = '{NAME}'"):
        client.delete_registered_model(model.name)
    yield


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--alpha", "1"], "--alpha must be less than 1; got 1.0."),
        (["--alpha", "0"], "--alpha must be greater than 0; got 0.0."),
        (["--alpha", "nan"], "--alpha must be a finite number; got nan."),
        (["--min_delta", "nan"], "--min_delta must be a finite number; got nan."),
        (["--min_delta", "inf"], "--min_delta must be a finite number; got inf."),
        (["--min_delta", "-0.01"], "--min_delta must be at least 0; got -0.01."),
        (["--min_delta", "1.5"], "--min_delta must be at most 1; got 1.5."),
    ],
)
def test_a_level_or_margin_that_means_nothing_is_refused_in_one_line(
    arguments: list[str], message: str, isolated_mlflow
) -> None:
    # min_delta nan compared as no margin at all (it moved @champion); alpha 1 called p = 0.18 "beyond chance".
    result = CliRunner().invoke(cli, ["promote", *arguments])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {message}"]
    assert not promote_runs(isolated_mlflow), "refused before any run opened"


def test_first_promotion_registers_the_best_run_and_records_why(config, digest, isolated_mlflow) -> None:
    make_run(digest, 0.40)
    best = make_run(digest, 0.70, stage="probe")
    make_run(digest, 0.95, model=False, stage="dummy")  # no model: not a candidate
    make_run(digest, 0.99, status="FAILED")  # not finished: not a candidate
    make_run(digest, None)  # without the metric: not a candidate

    promote.run(config)

    assert champion_run() == best
    assert versions() == [best]
    [decision] = promote_runs(isolated_mlflow)
    assert decision.info.status == "FINISHED"
    assert decision.data.params["candidate_run_id"] == best
    assert decision.data.params["candidate_stage"] == "probe"
    assert decision.data.params["candidate_version"] == "1"
    assert decision.data.params["champion_version"] == "none"
    assert float(decision.data.params["candidate_value"]) == pytest.approx(0.70)
    assert decision.data.tags["promote_decision"] == "promoted"
    assert "no @champion yet" in decision.data.tags["promote_reason"]
    assert decision.data.tags["dataset_digest"] == digest
    version = MlflowClient().get_model_version(NAME, "1")
    assert version.description.startswith("## Promotion\n\n**Champion**")
    assert "<!--" not in version.description
    assert version.tags["promote_run_id"] == decision.info.run_id
    assert "val_f1_weighted: 0.7000" in version.description
    assert version.tags["dataset_digest"] == digest


def test_a_strictly_better_run_moves_the_alias(config, digest, isolated_mlflow) -> None:
    first = make_run(digest, 0.60)
    promote.run(config)
    better = make_run(digest, 0.61)
    promote.run(config)

    assert champion_run() == better
    assert versions() == sorted([first, better])
    last = promote_runs(isolated_mlflow)[-1]
    assert last.data.tags["promote_decision"] == "promoted"
    assert last.data.params["champion_version"] == "1"
    assert float(last.data.params["champion_value"]) == pytest.approx(0.60)
    assert "0.6100 of version 2 beats 0.6000 of version 1" in last.data.tags["promote_reason"]


def test_an_equal_run_is_registered_but_the_alias_stays(config, digest, isolated_mlflow) -> None:
    first = make_run(digest, 0.60)
    promote.run(config)
    equal = make_run(digest, 0.60)  # same scores, more recent: the candidate, yet not better
    promote.run(config)

    assert champion_run() == first
    assert versions() == sorted([first, equal])
    last = promote_runs(isolated_mlflow)[-1]
    assert last.data.tags["promote_decision"] == "kept"
    assert "is not strictly better than 0.6000 of the champion, version 1" in last.data.tags["promote_reason"]
    assert "**Not promoted**" in MlflowClient().get_model_version(NAME, "2").description


def test_a_worse_run_leaves_the_champion_and_is_not_registered(config, digest, isolated_mlflow) -> None:
    first = make_run(digest, 0.60)
    promote.run(config)
    make_run(digest, 0.55)
    promote.run(config)

    assert champion_run() == first
    assert versions() == [first]
    assert "already the champion" in promote_runs(isolated_mlflow)[-1].data.tags["promote_reason"]


def test_running_again_never_registers_twice_and_keeps_card_and_note(config, digest, isolated_mlflow) -> None:
    run_id = make_run(digest, 0.60)
    # finetune registers its model right away; promote must reuse that version.
    experiment_id = mlflow.get_experiment_by_name(isolated_mlflow).experiment_id
    uri = registry.candidates(experiment_id, digest, "val_f1_weighted")[0].model_uri
    assert registry.register(uri, NAME, LABELS) == "1"
    assert registry.register(uri, NAME, LABELS) == "1"
    registry.describe_version(NAME, "1", "# Model card", {"stage": "finetune"}, overwrite=True)
    promote.run(config)
    note = MlflowClient().get_model_version(NAME, "1").description
    assert note.startswith("# Model card\n\n## Promotion\n\n**Champion**")
    promote.run(config)

    assert versions() == [run_id]
    assert champion_run() == run_id
    assert MlflowClient().get_model_version(NAME, "1").description == note
    assert [r.data.tags["promote_decision"] for r in promote_runs(isolated_mlflow)] == ["promoted", "kept"]


def test_a_champion_of_another_dataset_is_never_compared(config, digest, isolated_mlflow) -> None:
    other = make_run("0" * 64, 0.30)
    experiment_id = mlflow.get_experiment_by_name(isolated_mlflow).experiment_id
    [old] = registry.candidates(experiment_id, "0" * 64, "val_f1_weighted")
    registry.set_champion(NAME, registry.register(old.model_uri, NAME, LABELS))
    better_here = make_run(digest, 0.90)

    promote.run(config)

    assert champion_run() == other
    assert versions() == sorted([other, better_here])
    last = promote_runs(isolated_mlflow)[-1]
    assert last.data.tags["promote_decision"] == "kept"
    assert "dataset digest 000000000000" in last.data.tags["promote_reason"]
    assert "not compared" in last.data.tags["promote_reason"]


def test_an_empty_experiment_fails_with_a_clear_message(small_dataset, isolated_mlflow) -> None:
    result = CliRunner().invoke(cli, ["promote", "--dataset", str(small_dataset)])

    assert result.exit_code == 1
    assert "Nothing to promote in experiment" in result.output
    assert "no finished run with a logged model" in result.output
    assert "emotion-exp finetune" in result.output
    [failed] = promote_runs(isolated_mlflow)
    assert failed.info.status == "FAILED"
    assert "Nothing to promote" in failed.data.tags["error"]


def test_runs_of_other_data_only_are_named_in_the_message(config) -> None:
    make_run("f" * 64, 0.8)
    with pytest.raises(UserError, match=r"other data only \(1 for digest ffffffffffff\)"):
        promote.run(config)


def test_ties_go_to_validation_accuracy_then_the_most_recent_run() -> None:
    def candidate(run_id: str, value: float, accuracy: float, start: int) -> Candidate:
        return Candidate(run_id, f"runs:/{run_id}/model", "finetune", value, accuracy, start)

    tied = [candidate("a", 0.8, 0.7, 3), candidate("b", 0.8, 0.9, 1), candidate("c", 0.7, 1.0, 9)]
    assert promote.best(tied).run_id == "b"
    assert promote.best([candidate("a", 0.8, 0.7, 3), candidate("b", 0.8, 0.7, 5)]).run_id == "b"


@pytest.mark.parametrize(
    ("champion", "promoted", "reason"),
    [
        (None, True, "no @champion yet"),
        (Champion("1", "old", "d" * 64, 0.7), True, "beats 0.7000 of version 1"),
        (Champion("1", "old", "d" * 64, 0.8), False, "not strictly better"),
        (Champion("1", "old", "d" * 64, 0.9), False, "not strictly better"),
        (Champion("1", "old", "e" * 64, 0.1), False, "not compared"),
        (Champion("1", "old", None, None), False, "not compared"),
        (Champion("1", "old", "d" * 64, None), False, "has no val_f1_weighted"),
        (Champion("2", "new", "d" * 64, 0.8), False, "already the champion"),
    ],
)
def test_the_promotion_rule(champion, promoted, reason) -> None:
    candidate = Candidate("new", "runs:/new/model", "finetune", 0.8, 0.8, 1)
    decision = promote.decide(candidate, "2", champion, metric="val_f1_weighted", digest="d" * 64)
    assert decision.promoted is promoted
    assert reason in decision.reason


# --- the default rule: better beyond chance on the same validation texts ---------------------------------


def scored_run(splits: data.DatasetSplits, right: np.ndarray) -> str:
    """A finetune-like run whose per-text predictions are right exactly on the texts ``right`` marks."""
    gold = splits.validation["label"].to_numpy()
    predicted = np.where(right, gold, (gold + 1) % len(splits.label_names))
    probabilities = np.eye(len(splits.label_names))[predicted]
    scores = metrics.evaluate(gold, predicted, splits.label_names)
    with mlflow.start_run(run_name="finetune") as run:
        mlflow.set_tags({"stage": "finetune", "dataset_digest": splits.digest})
        mlflow.log_metrics(scores.metrics("val"))
        table = significance.predictions_table("validation", gold, probabilities, splits.label_names)
        log_table(table, significance.PREDICTIONS_ARTIFACT)
        log_keyword_model(input_example=False)
    return run.info.run_id


def right_on(count: int, first: int = 0, total: int = 40) -> np.ndarray:
    return np.isin(np.arange(total), np.arange(first, first + count))


@pytest.fixture
def splits(small_dataset: Path) -> data.DatasetSplits:
    return data.load_splits(DataConfig(dataset=str(small_dataset)))


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_candidate_better_by_less_than_noise_is_refused_with_the_p_value(splits, small_dataset, isolated_mlflow):
    champion = scored_run(splits, right_on(20))
    promote.run(PromoteConfig(dataset=str(small_dataset)))
    candidate = scored_run(splits, right_on(22))  # 2 more texts right, none fewer: p = 0.5

    promote.run(PromoteConfig(dataset=str(small_dataset)))

    assert champion_run() == champion
    last = promote_runs(isolated_mlflow)[-1]
    assert last.data.tags["promote_decision"] == "kept"
    reason = last.data.tags["promote_reason"]
    expected_p = binomtest(2, 2).pvalue
    assert (
        f"McNemar p={expected_p:.2g}" in reason
        and "(2 texts only the candidate gets right, 0 only the champion)" in reason
    )
    assert "a gap chance alone makes, so the alias stays" in reason
    candidate_f1, champion_f1 = (mlflow.get_run(r).data.metrics["val_f1_weighted"] for r in (candidate, champion))
    assert f"difference {candidate_f1 - champion_f1:+.4f} [" in reason
    assert f"val_f1_weighted {candidate_f1:.3f} [" in reason and f"against {champion_f1:.3f} [" in reason
    version = MlflowClient().get_model_version(NAME, "2")
    assert version.run_id == candidate and version.tags["promotion_rule"] == "significant"
    assert float(version.tags["promotion_pvalue"]) == pytest.approx(expected_p)
    assert "gap chance alone makes" in version.description

    # The strict rule promotes the same candidate on its margin.
    promote.run(PromoteConfig(dataset=str(small_dataset), rule="better"))
    assert champion_run() == candidate


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_a_candidate_better_beyond_noise_is_promoted_and_min_delta_can_hold_it_back(
    splits, small_dataset, isolated_mlflow
):
    champion = scored_run(splits, right_on(20))
    promote.run(PromoteConfig(dataset=str(small_dataset)))
    candidate = scored_run(splits, right_on(34))  # 14 more texts right: p = 2 * 0.5**14

    promote.run(PromoteConfig(dataset=str(small_dataset), min_delta=0.9))
    assert champion_run() == champion
    assert "below --min_delta 0.9" in promote_runs(isolated_mlflow)[-1].data.tags["promote_reason"]

    promote.run(PromoteConfig(dataset=str(small_dataset)))
    assert champion_run() == candidate
    last = promote_runs(isolated_mlflow)[-1]
    assert last.data.tags["promote_decision"] == "promoted"
    assert f"McNemar p={binomtest(14, 14).pvalue:.2g}" in last.data.tags["promote_reason"]
    assert last.data.metrics["promotion_pvalue"] == pytest.approx(binomtest(14, 14).pvalue)


def test_a_champion_without_per_text_predictions_is_scored_by_its_model(splits, small_dataset, isolated_mlflow):
    # A champion from before per-text predictions: promote predicts validation with the model itself.
    make_run(splits.digest, 0.01)
    promote.run(PromoteConfig(dataset=str(small_dataset)))
    scored_run(splits, right_on(40))
    result = CliRunner().invoke(cli, ["promote", "--dataset", str(small_dataset)])
    assert result.exit_code == 0, result.output
    assert "has no per-text predictions; predicting validation with models:/emotion-classifier/1" in result.output
    assert "McNemar p=" in result.output
