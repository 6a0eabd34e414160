"""The MLflow UI opens where a newcomer needs it: training runs, and the study's comparison one link away."""

from __future__ import annotations

import json
import urllib.parse

import mlflow
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import tracking
from emotion_exp.cli import cli
from emotion_exp.workflows import study


def test_a_stage_tags_its_experiment_so_the_ui_opens_on_training_runs(isolated_mlflow: str) -> None:
    result = CliRunner().invoke(cli, ["dummy"])

    assert result.exit_code == 0, result.output
    experiment = mlflow.get_experiment_by_name(isolated_mlflow)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_that_says_what_it_is_keeps_its_kind(isolated_mlflow: str) -> None:
    experiment_id = mlflow.create_experiment(f"{isolated_mlflow}-genai", tags={"mlflow.experimentKind": "finetuning"})
    tracking.mark_experiment(experiment_id)
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "finetuning"


def test_the_comparison_link_is_the_uis_compare_runs_route() -> None:
    url = tracking.comparison_url("7", ["a1", "b2"], tracking_uri="sqlite:///mlflow.db")
    address, _, route = url.partition("/#/compare-runs?")
    assert address == "http://127.0.0.1:5000"
    query = urllib.parse.parse_qs(route)
    assert json.loads(query["runs"][0]) == ["a1", "b2"] and json.loads(query["experiments"][0]) == ["7"]
    served = tracking.comparison_url("7", ["a1"], tracking_uri="https://mlflow.example.org/")
    assert served.startswith("https://mlflow.example.org/#/compare-runs?runs=")


def test_the_study_summary_links_to_the_comparison_of_its_stage_runs(isolated_mlflow: str) -> None:
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(isolated_mlflow).experiment_id
    with mlflow.start_run(run_name="main") as parent:
        stages = []
        for stage in ("extract", "dummy", "tfidf", "promote"):
            with mlflow.start_run(run_name=stage, nested=True, tags={"stage": stage}) as child:
                if stage in ("dummy", "tfidf"):
                    mlflow.log_metric("val_accuracy", 0.5)
                stages.append(child.info.run_id)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"

    text = study.summary(parent.info.run_id, seconds=1.0)

    runs_line, link = text.splitlines()[-2:]
    assert runs_line == f"In the MLflow UI: the runs {tracking.experiment_url(experiment_id)}"
    assert runs_line.endswith(f"/#/experiments/{experiment_id}?workflowType=machine_learning")
    assert link.startswith("  and the stage runs side by side http")
    runs = json.loads(urllib.parse.parse_qs(link.partition("/#/compare-runs?")[2])["runs"][0])
    assert runs == stages[1:3]  # the model stages, not extract's features nor the promote decision
    assert experiment_id in link
