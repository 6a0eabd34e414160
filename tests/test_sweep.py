"""The sweep: search space and storage rules, trials as nested runs selected on validation only,
the test split scored once for the best trial, the median pruner on fine-tuning, and resuming a study."""

from __future__ import annotations

import importlib.util
import re
import signal
import uuid
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import catalog, data, metrics
from emotion_exp.catalog import SweepConfig
from emotion_exp.cli import cli
from emotion_exp.config import DataConfig
from emotion_exp.errors import UserError
from emotion_exp.workflows import search_space, sweep, sweep_storage


def children(parent_id: str) -> list[mlflow.entities.Run]:
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list"
    )
    return sorted(runs, key=lambda run: int(run.data.tags.get("trial_number", -1)))


def trials_of(parent_id: str) -> list[mlflow.entities.Run]:
    return [run for run in children(parent_id) if "trial_number" in run.data.tags]


# --- search space and storage ---------------------------------------------------------------------


def test_the_default_spaces_are_the_issues_and_overrides_replace_single_parameters() -> None:
    space = search_space.search_space("finetune")
    assert space["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 5e-4, log=True)
    assert space["epochs"] == optuna.distributions.IntDistribution(1, 5)
    assert space["batch_size"].choices == (16, 32, 64)
    assert (space["warmup"], space["weight_decay"]) == (
        optuna.distributions.FloatDistribution(0.0, 0.2),
        optuna.distributions.FloatDistribution(0.0, 0.1),
    )
    for stage in ("probe", "tfidf"):  # the spaces the registry declares, as they were before it
        assert search_space.search_space(stage) == {
            "C": optuna.distributions.FloatDistribution(1e-3, 1e2, log=True),
            "class_weight": optuna.distributions.CategoricalDistribution(("none", "balanced")),
        }

    space = search_space.search_space("tfidf", "C=0.01..10:log, class_weight=balanced")
    assert space["C"] == optuna.distributions.FloatDistribution(0.01, 10, log=True)
    assert space["class_weight"].choices == ("balanced",)
    assert search_space.search_space("finetune", "epochs=1..2,batch_size=8|16")["epochs"] == (
        optuna.distributions.IntDistribution(1, 2)
    )
    assert search_space.search_space("knn") == {
        "n_neighbors": optuna.distributions.IntDistribution(1, 30),
        "weights": optuna.distributions.CategoricalDistribution(("uniform", "distance")),
    }


def test_values_take_the_type_their_declaration_gives() -> None:
    # A choice of an int field holds ints (the configs refuse '3' for a whole number), of a float field floats.
    assert search_space.search_space("knn", "n_neighbors=3|5|7")["n_neighbors"].choices == (3, 5, 7)
    assert search_space.search_space("knn", "n_neighbors=4")["n_neighbors"].choices == (4,)
    assert search_space.search_space("probe", "max_iter=100..1000:log")["max_iter"] == (
        optuna.distributions.IntDistribution(100, 1000, log=True)
    )
    assert search_space.search_space("tfidf", "C=1|10")["C"].choices == (1.0, 10.0)
    assert search_space.search_space("finetune", "max_length=32|64")["max_length"].choices == (32, 64)
    assert search_space.search_space("knn", "weights=uniform")["weights"].choices == ("uniform",)


def test_every_sweepable_stage_of_the_registry_and_none_other_can_be_swept() -> None:
    for name, spec in catalog.STAGES.items():
        if spec.sweepable:
            assert SweepConfig(stage=name).stage == name
            assert search_space.search_space(name)
        else:
            with pytest.raises(UserError, match=f"--stage must be one of {', '.join(catalog.sweepable())}; got"):
                SweepConfig(stage=name)


@pytest.mark.parametrize(
    ("stage", "overrides", "message"),
    [
        ("tfidf", "learning_rate=1e-5..1e-3", "'learning_rate' is not searchable for the tfidf stage"),
        ("tfidf", "C", "entries look like NAME=LOW..HIGH"),
        ("tfidf", "C=10..1", "a range needs numbers LOW < HIGH"),
        ("tfidf", "C=0..1:log", "LOW > 0 for :log"),
        ("finetune", "epochs=1.5..3", "epochs takes whole numbers"),
        ("tfidf", "class_weight=none|sometimes", "--class_weight must be one of none, balanced"),
        ("finetune", "warmup=0..1", "--warmup must be less than 1; got 1.0"),
        ("knn", "n_neighbors=2.5|3", "n_neighbors takes whole numbers; got '2.5'"),
        ("knn", "n_neighbors=0..5", "--n_neighbors must be at least 1; got 0"),
        ("knn", "weights=uniform..distance", "weights is not a number; give a choice"),
        ("knn", "leaf_size=1..5", "'leaf_size' is not searchable for the knn stage"),
        ("tfidf", "C=1..inf", "C takes finite numbers; got 'inf'"),
        ("tfidf", "C=nan..1", "C takes finite numbers; got 'nan'"),
        ("tfidf", "C=1,C=2", "--search_space names C twice"),
    ],
)
def test_a_bad_search_space_is_refused_before_any_trial(stage: str, overrides: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        search_space.search_space(stage, overrides)


def test_the_study_gets_its_own_database_beside_a_sqlite_store_and_never_mlflows(tmp_path: Path) -> None:
    assert sweep_storage.resolve_storage("", f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert sweep_storage.resolve_storage("", str(tmp_path / "mlruns")) == f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(UserError, match="is the MLflow tracking store's own database"):
        sweep_storage.resolve_storage(
            f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/../{tmp_path.name}/mlflow.db"
        )
    with pytest.raises(UserError, match="is the MLflow tracking store's own database") as shared:
        sweep_storage.resolve_storage("postgresql://me:secret@db:5432/mlflow", "postgresql://other@db:5432/mlflow")
    assert "secret" not in str(shared.value)
    with pytest.raises(UserError, match="pass --optuna_storage"):
        sweep_storage.resolve_storage("", "http://127.0.0.1:5000")
    given = f"sqlite:///{tmp_path}/optuna.db"  # (a PostgreSQL URL would need its driver, in the server extra only)
    assert sweep_storage.resolve_storage(given, "http://127.0.0.1:5000") == given
    assert "secret" not in sweep_storage.shown_storage("postgresql://me:secret@db/optuna")


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("notaurl", "--optuna_storage 'notaurl' is not a database URL: expected dialect://"),
        ("postgresql//me:secret@db/optuna", "--optuna_storage '***@db/optuna' is not a database URL"),
        ("redis://127.0.0.1:6379", "SQLAlchemy has no database kind 'redis'; pass a sqlite, postgresql or mysql URL"),
        pytest.param(
            "mysql://me:secret@db/optuna",
            "needs the database driver 'MySQLdb', which is not installed",
            marks=pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient installed"),
        ),
        ("sqlite:////no/such/folder/optuna.db", "the folder /no/such/folder of the sqlite file does not exist"),
    ],
)
def test_an_optuna_storage_that_is_no_usable_database_url_is_a_user_error(storage: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        sweep_storage.resolve_storage(storage, "sqlite:///mlflow.db")
    assert "secret" not in str(raised.value)


# --- tfidf: selection on validation, the test split once, resume --------------------------------------


@pytest.mark.slow
def test_a_tfidf_sweep_selects_on_validation_and_scores_only_the_best_trial_on_test(
    small_dataset: Path, isolated_mlflow: str
) -> None:
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    config = SweepConfig(dataset=str(small_dataset), stage="tfidf", n_trials=3, study_name=name, registered_model=name)
    parent_id = sweep.run(config)

    parent = mlflow.get_run(parent_id)
    trials = trials_of(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "sweep"
    assert [run.data.tags["trial_number"] for run in trials] == ["0", "1", "2"]
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "tfidf"
        assert {"C", "class_weight"} <= set(run.data.params) and "val_f1_weighted" in run.data.metrics
        # The test rule: no trial scored the test split.
        assert not [m for m in run.data.metrics if m.startswith("test_") and m != "test_rows"]
        plots = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
        assert "plots/confusion_matrix_test.png" not in plots
    assert len({run.data.params["C"] for run in trials}) == 3

    best = max(trials, key=lambda run: run.data.metrics["val_f1_weighted"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_value"] == pytest.approx(best.data.metrics["val_f1_weighted"])
    assert parent.data.tags["best_params"] == (
        f'{{"C": {float(best.data.params["C"])!r}, "class_weight": "{best.data.params["class_weight"]}"}}'
    )
    # The best trial's model, scored on test once, on the parent.
    splits = data.load_splits(DataConfig(dataset=str(small_dataset)))
    predicted = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(splits.test[["text"]])["label"]
    expected = metrics.evaluate(splits.test["label"], predicted.map(splits.label_names.index), splits.label_names)
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(expected.accuracy)
    # Scored by a nested evaluate run, with everything an evaluation logs (error analysis, calibration).
    evaluated = mlflow.get_run(parent.data.tags["best_trial_evaluation"])
    assert evaluated.data.tags["stage"] == "evaluate" and evaluated.data.tags["mlflow.parentRunId"] == parent_id
    assert "plots/reliability_test.png" in {
        a.path for a in MlflowClient().list_artifacts(evaluated.info.run_id, "plots")
    }
    assert parent.data.metrics["best_test_ece"] == evaluated.data.metrics["test_ece"]
    assert parent.data.metrics["best_test_accuracy_ci_low"] <= expected.accuracy
    assert expected.accuracy <= parent.data.metrics["best_test_accuracy_ci_high"]
    # How many trials the best one cannot be told apart from: overlapping validation intervals, counted here.
    low, high = best.data.metrics["val_f1_weighted_ci_low"], best.data.metrics["val_f1_weighted_ci_high"]
    assert (parent.data.metrics["best_value_ci_low"], parent.data.metrics["best_value_ci_high"]) == (low, high)
    overlapping = [
        run
        for run in trials
        if run is not best
        and run.data.metrics["val_f1_weighted_ci_high"] >= low
        and run.data.metrics["val_f1_weighted_ci_low"] <= high
    ]
    assert parent.data.metrics["trials_within_noise"] == len(overlapping)
    assert parent.data.tags["within_noise"].startswith(
        f"{len(overlapping)} of the other 2 complete trials are within noise"
    )
    assert MlflowClient().get_model_version(name, "1").run_id == best.info.run_id
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]

    artifacts = {a.path for folder in ("plots", "sweep") for a in MlflowClient().list_artifacts(parent_id, folder)}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "sweep/trials.csv"} <= artifacts
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="sweep/trials.csv"))
    assert list(table["number"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert set(table["user_attrs_mlflow_run_id"]) == {run.info.run_id for run in trials}
    assert list(table["value_ci_low"]) == [run.data.metrics["val_f1_weighted_ci_low"] for run in trials]


@pytest.mark.slow
def test_a_resumed_sweep_continues_its_study_under_the_same_parent(small_dataset: Path, isolated_mlflow: str) -> None:
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    options = [
        "sweep",
        "--dataset",
        str(small_dataset),
        "--stage",
        "tfidf",
        "--study_name",
        name,
        "--registered_model",
        "",
    ]
    first = CliRunner().invoke(cli, [*options, "--n_trials", "2"])
    assert first.exit_code == 0, first.output
    [parent] = mlflow.search_runs(filter_string="tags.stage = 'sweep'", output_format="list")

    resumed = CliRunner().invoke(cli, [*options, "--n_trials", "3"])

    assert resumed.exit_code == 0, resumed.output
    assert "1 trial(s) to run" in resumed.output
    assert len(mlflow.search_runs(filter_string="tags.stage = 'sweep'", output_format="list")) == 1
    trials = trials_of(parent.info.run_id)
    assert [run.data.tags["trial_number"] for run in trials] == ["0", "1", "2"]
    assert len({run.data.params["C"] for run in trials}) == 3  # the resumed sampler drew a new point
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"
    storage = mlflow.get_run(parent.info.run_id).data.tags["optuna_storage"]
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 3

    other = CliRunner().invoke(cli, [*options, "--n_trials", "3", "--search_space", "C=1..2"])
    assert other.exit_code != 0
    assert f"--study_name {name} names a study" in other.output and "the search space was" in other.output


@pytest.mark.slow
def test_a_trial_killed_outright_is_marked_fail_on_resume_and_run_again(
    small_dataset: Path, isolated_mlflow: str
) -> None:
    """Killed before its first heartbeat (or by an emotion-exp without heartbeats): failed after two heartbeats."""
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    options = ["sweep", "--dataset", str(small_dataset), "--stage", "tfidf", "--study_name", name, "--heartbeat", "1"]
    first = CliRunner().invoke(cli, [*options, "--registered_model", "", "--n_trials", "1"])
    assert first.exit_code == 0, first.output
    [parent] = mlflow.search_runs(filter_string="tags.stage = 'sweep'", output_format="list")
    storage = parent.data.tags["optuna_storage"]
    optuna.load_study(study_name=name, storage=storage).ask()  # a trial whose process was killed: RUNNING

    resumed = CliRunner().invoke(cli, [*options, "--registered_model", "", "--n_trials", "2"])

    assert resumed.exit_code == 0, resumed.output
    assert "trial(s) 1 of study" in resumed.output and "marked FAIL, and run again" in resumed.output
    states = [trial.state.name for trial in optuna.load_study(study_name=name, storage=storage).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]


# --- finetune: the median pruner ------------------------------------------------------------------


@pytest.mark.slow
def test_a_finetune_trial_below_the_median_is_pruned_and_its_run_kept(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str
) -> None:
    """A study that already holds a trial with validation F1 0.99 after epoch 2: a two-epoch trial
    of the tiny model falls below it and is pruned there; a one-epoch trial has nothing to be
    compared with and completes."""
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    config = SweepConfig(
        dataset=str(small_dataset),
        model=str(tiny_model_dir),
        stage="finetune",
        n_trials=3,
        study_name=name,
        search_space="epochs=1..2,batch_size=16",
        pruner_startup_trials=1,
        registered_model="",
        umap_max_points=50,
    )
    space = search_space.search_space("finetune", config.search_space)
    storage = sweep_storage.resolve_storage("", mlflow.get_tracking_uri())
    digest = data.load_splits(DataConfig(dataset=str(small_dataset))).digest
    opened = sweep_storage.open_storage(storage, config.heartbeat)
    study = sweep.open_study(config, opened, name, search_space.space_description(space), digest)
    params = {"learning_rate": 1e-4, "epochs": 2, "warmup": 0.1, "weight_decay": 0.01, "batch_size": 16}
    study.add_trial(
        optuna.trial.create_trial(params=params, distributions=space, value=0.0, intermediate_values={2: 0.99})
    )
    study.enqueue_trial({"epochs": 2})
    study.enqueue_trial({"epochs": 1})

    parent_id = sweep.run(config)

    pruned, complete = trials_of(parent_id)
    assert pruned.data.tags["trial_number"] == "1" and complete.data.tags["trial_number"] == "2"
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned"] == "true"
    assert pruned.data.tags["pruned_at_epoch"] == "2" and "pruned by the median pruner" in pruned.data.tags["error"]
    history = MlflowClient().get_metric_history(pruned.info.run_id, "eval_f1_weighted")
    assert len(history) == 2  # what it logged stays
    assert "val_f1_weighted" not in pruned.data.metrics
    assert not Path("checkpoints", pruned.info.run_id).exists()
    assert complete.info.status == "FINISHED" and "pruned" not in complete.data.tags
    assert "test_accuracy" not in complete.data.metrics
    assert not Path("checkpoints", complete.info.run_id).exists()
    states = [trial.state for trial in optuna.load_study(study_name=name, storage=storage).trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
    ]
    parent = mlflow.get_run(parent_id)
    assert parent.data.tags["best_run_id"] == complete.info.run_id
    assert 0 <= parent.data.metrics["best_test_accuracy"] <= 1
    assert parent.data.metrics["trials_pruned"] == 1


# --- Ctrl-C -------------------------------------------------------------------------------------


def trial_runs_of_study(study_name: str) -> list[mlflow.entities.Run]:
    runs = mlflow.search_runs(filter_string=f"tags.study_name = '{study_name}'", output_format="list")
    return [run for run in runs if "trial_number" in run.data.tags]


@pytest.mark.slow
def test_ctrl_c_ends_the_current_trial_cleanly_and_the_hint_resumes_the_study(
    small_dataset: Path, tmp_path: Path, isolated_mlflow: str
) -> None:
    from tests.helpers import emotion_exp, finish, wait_for

    name = f"sweep-{uuid.uuid4().hex[:8]}"
    options = ["sweep", "--dataset", str(small_dataset), "--n_trials", "3", "--registered_model", ""]
    log = tmp_path / "sweep.log"
    process = emotion_exp(*options, "--study_name", name, log=log)
    # The log, not the store, is polled: reads of the sqlite store would compete with the sweep's writes.
    wait_for(lambda: "Trial 0 finished" in log.read_text(), process, log, "a first finished trial")
    process.send_signal(signal.SIGINT)
    assert finish(process, log) == 130, log.read_text()[-3000:]

    [parent] = mlflow.search_runs(filter_string="tags.stage = 'sweep'", output_format="list")
    assert parent.info.status == "KILLED"
    hint = parent.data.tags["resume_hint"]
    assert f"emotion-exp sweep --dataset {small_dataset} --n_trials 3 --registered_model '' --study_name {name}" in hint
    assert hint in log.read_text()
    statuses = {run.info.status for run in trial_runs_of_study(name)}
    assert statuses <= {"FINISHED", "KILLED"}  # the interrupted trial ended, and nothing FAILED

    resumed = CliRunner().invoke(cli, [*options, "--study_name", name])

    assert resumed.exit_code == 0, resumed.output
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"
    assert not {"error", "resume_hint"} & set(mlflow.get_run(parent.info.run_id).data.tags)
    storage = mlflow.get_run(parent.info.run_id).data.tags["optuna_storage"]
    states = [trial.state for trial in optuna.load_study(study_name=name, storage=storage).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert {run.data.tags["mlflow.parentRunId"] for run in trial_runs_of_study(name)} == {parent.info.run_id}
