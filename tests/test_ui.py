"""The MLflow UI opens where a newcomer needs it: the study's result on the first screen, one link away.

The pages themselves are checked in a real browser in tests/test_ui_browser.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import significance, tracking
from emotion_exp.cli import cli
from emotion_exp.workflows import study
from tests.helpers import LABELS


def test_a_stage_tags_its_experiment_so_the_ui_opens_on_training_runs(isolated_mlflow: str) -> None:
    result = CliRunner().invoke(cli, ["dummy"])

    assert result.exit_code == 0, result.output
    experiment = mlflow.get_experiment_by_name(isolated_mlflow)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_that_says_what_it_is_keeps_its_kind(isolated_mlflow: str) -> None:
    experiment_id = mlflow.create_experiment(f"{isolated_mlflow}-genai", tags={"mlflow.experimentKind": "finetuning"})
    tracking.mark_experiment(experiment_id)
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "finetuning"


def test_the_links_use_the_uis_port_or_the_servers_address_and_its_training_view() -> None:
    local = tracking.ui_address("sqlite:///mlflow.db", 5123)
    assert local == "http://127.0.0.1:5123"
    assert tracking.ui_address("https://mlflow.example.org/", 5123) == "https://mlflow.example.org"
    assert (
        tracking.run_url(local, "7", "r1")
        == "http://127.0.0.1:5123/#/experiments/7/runs/r1?workflowType=machine_learning"
    )
    assert (
        tracking.models_url(local, "7") == "http://127.0.0.1:5123/#/experiments/7/models?workflowType=machine_learning"
    )
    best_first = tracking.child_runs_url(local, "7", "p1", "val_accuracy")
    address, _, query = best_first.partition("/#/experiments/7/runs?")
    assert address == local
    assert urllib.parse.parse_qs(query) == {
        "searchFilter": ["tags.mlflow.parentRunId = 'p1' AND metrics.val_accuracy >= 0"],
        "orderByKey": ["metrics.`val_accuracy`"],
        "orderByAsc": ["false"],
        "workflowType": ["machine_learning"],
    }


def _table(**best: float) -> pd.DataFrame:
    """A comparison table of two stages; ``best`` overrides the winner's paired figures."""
    winner = {
        "stage": "tfidf",
        "val_accuracy": 0.845,
        "val_accuracy_ci_low": 0.785,
        "val_accuracy_ci_high": 0.89,
        "versus": "probe",
        "val_accuracy_delta": 0.065,
        "val_accuracy_delta_ci_low": 0.005,
        "val_accuracy_delta_ci_high": 0.13,
        "val_mcnemar_pvalue": 0.06,
        **best,
    }
    other = {"stage": "probe", "val_accuracy": 0.78, "val_accuracy_ci_low": 0.718, "val_accuracy_ci_high": 0.835}
    return pd.DataFrame([other, winner])


def test_the_verdict_names_the_winner_its_interval_its_margin_and_whether_chance_can_make_it() -> None:
    assert study.verdict(_table()) == (
        "tfidf best: val accuracy 0.845 [0.785, 0.890], +0.065 [+0.005, +0.130] vs probe (p=0.06, not beyond chance)"
    )
    assert study.verdict(_table(val_mcnemar_pvalue=0.003)).endswith("(p=0.003, beyond chance)")
    assert study.verdict(_table(), markdown=True).startswith("**tfidf** best: val accuracy 0.845 [0.785, 0.890]")
    assert study.verdict(pd.DataFrame([{"stage": "extract", "val_accuracy": None}])) is None


def test_a_validation_split_too_small_to_separate_stages_gets_one_line() -> None:
    # 30 texts all right: the bootstrap says 1.000 [1.000, 1.000], the split's size says it cannot tell.
    line = significance.too_few_texts(30, "val accuracy 1.000 [1.000, 1.000]")
    assert line is not None and line.startswith("30 validation texts are too few to tell stages apart: ")
    assert "can be 0.37 wide (over 0.2; val accuracy 1.000 [1.000, 1.000])" in line
    assert significance.too_few_texts(200, "val accuracy 0.845 [0.785, 0.890]") is None  # the bundled sample's


def _study_runs(experiment_id: str) -> tuple[str, list[str]]:
    """A finished parent with extract, two scored stages and a promote decision; (parent id, children's ids)."""
    with mlflow.start_run(run_name="main", tags={"stage": "main"}) as parent:
        children = []
        for stage in ("extract", "probe", "tfidf", "promote"):
            tags = {"stage": stage}
            if stage == "promote":
                tags |= {"promote_decision": "promoted", "promote_candidate_stage": "tfidf", "registered_model": "m"}
                tags["promote_reason"] = "no @champion yet; version 1 (val_f1_weighted 0.8433) becomes champion"
            with mlflow.start_run(run_name=stage, nested=True, tags=tags) as child:
                if stage in ("probe", "tfidf"):
                    mlflow.log_metric("val_accuracy", 0.5)
                children.append(child.info.run_id)
        mlflow.log_metric("val_rows", 200)
    return parent.info.run_id, children


def test_the_study_is_described_where_the_ui_shows_it_first(isolated_mlflow: str) -> None:
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(isolated_mlflow).experiment_id
    parent_id, _ = _study_runs(experiment_id)

    study.describe(parent_id, _table())

    parent = client.get_run(parent_id)
    headline = "tfidf best: val accuracy 0.845 [0.785, 0.890], +0.065 [+0.005, +0.130] vs probe"
    assert parent.info.run_name.startswith(f"main: {headline}")
    note = parent.data.tags["mlflow.note.content"]
    first, champion, chart, *_ = note.split("\n\n")
    assert first.startswith("**tfidf** best: val accuracy 0.845 [0.785, 0.890]")
    assert champion.startswith("Champion `models:/m@champion`: promoted (tfidf was the best run): no `@champion` yet")
    chart_address = f"get-artifact?path=plots%2Fcomparison.png&run_uuid={parent_id}"  # the UI server's own route
    assert chart == f"![Validation scores by stage with their 95% intervals]({chart_address})"
    assert "| tfidf" in note
    described = client.get_experiment(experiment_id).tags["mlflow.note.content"]
    assert described.split("\n\n")[0] == first  # the line a collapsed experiment description shows
    assert f"The latest study: run `{parent_id}`" in described


def test_a_description_someone_wrote_on_the_experiment_is_kept(isolated_mlflow: str) -> None:
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(isolated_mlflow).experiment_id
    first_study, _ = _study_runs(experiment_id)
    study.describe(first_study, _table())
    second_study, _ = _study_runs(experiment_id)
    study.describe(second_study, _table(val_accuracy=0.9))
    assert f"run `{second_study}`" in client.get_experiment(experiment_id).tags["mlflow.note.content"]

    client.set_experiment_tag(experiment_id, "mlflow.note.content", "Our reviews project: see the wiki.")
    third_study, _ = _study_runs(experiment_id)
    study.describe(third_study, _table())

    assert client.get_experiment(experiment_id).tags["mlflow.note.content"] == "Our reviews project: see the wiki."
    assert client.get_run(third_study).data.tags["mlflow.note.content"].startswith("**tfidf** best")


def test_the_study_summary_prints_the_store_for_every_tool_and_links_that_show_the_result(
    isolated_mlflow: str, tracking_uri: str
) -> None:
    experiment_id = mlflow.get_experiment_by_name(isolated_mlflow).experiment_id
    parent_id, _ = _study_runs(experiment_id)

    text = study.summary(parent_id, seconds=1.0, ui_port=5123)

    lines = text.splitlines()
    assert f"export MLFLOW_TRACKING_URI={tracking_uri}" in lines
    assert any(line.startswith("Open it: ") and line.endswith("--port 5123 --workers 1") for line in lines)
    links = lines[lines.index("In the MLflow UI:") + 1 :]
    address = "http://127.0.0.1:5123"
    assert links == [
        f"  the study's result: {tracking.run_url(address, experiment_id, parent_id)}",
        f"  its stage runs, best first: {tracking.child_runs_url(address, experiment_id, parent_id, 'val_accuracy')}",
        f"  its models: {tracking.models_url(address, experiment_id)}",
    ]


@pytest.mark.slow  # mlflow models predict in a subprocess
def test_after_the_summarys_export_line_mlflows_own_tools_find_the_champion_from_another_folder(
    small_dataset: Path, tracking_uri: str, tmp_path: Path
) -> None:
    from emotion_exp import console
    from emotion_exp.config import PromoteConfig, TfidfConfig
    from emotion_exp.stages import promote, tfidf

    name = f"elsewhere-{uuid.uuid4().hex[:8]}"
    tfidf.run(TfidfConfig(dataset=str(small_dataset), registered_model=name))
    promote.run(PromoteConfig(dataset=str(small_dataset), registered_model=name))
    summary = console.summary(
        [],
        run_id="r",
        seconds=0,
        experiment="e",
        decision=None,
        champion_uri=None,
        tracking_uri=tracking_uri,
        ui_port=1,
    )
    [export] = [line for line in summary.splitlines() if line.startswith("export MLFLOW_TRACKING_URI=")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "texts.csv").write_text("text\ni feel so happy today\nthis waiting makes me anxious\n")
    predict = f"mlflow models predict -m models:/{name}@champion -i texts.csv -t csv -o out.json --env-manager local"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}  # a fresh shell
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    shell = ["bash", "-c", f"{export} && {predict}"]
    done = subprocess.run(shell, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads((elsewhere / "out.json").read_text())["predictions"]
    assert len(predictions) == 2 and all(row["label"] in LABELS for row in predictions)
    assert not (elsewhere / "mlflow.db").exists()  # no empty store of its own


def test_a_stages_model_is_named_after_it_with_its_validation_headline_linked_first(
    registered_tfidf: tuple[str, str],
) -> None:
    _, run_id = registered_tfidf
    run = mlflow.get_run(run_id)
    [model] = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    assert model.name == "tfidf"  # the Models tab lists tfidf, not "model"
    # The stage run's own (the session's model may also carry MLflow evaluator scores, logged by other runs).
    linked = {m.key: m for m in model.metrics if m.dataset_name and m.run_id == run_id}
    # Linked to the validation split's dataset: MLflow's Models tab shows a model's metrics grouped by dataset,
    # those of no dataset last, so the validation headline comes before the rows and vocabulary sizes.
    assert set(linked) == {"val_accuracy", "val_accuracy_ci_low", "val_accuracy_ci_high", "val_f1_weighted"}
    assert {m.dataset_name for m in linked.values()} == {f"{run.data.tags['dataset_name']}-validation"}
    assert all(m.value == run.data.metrics[key] for key, m in linked.items())
