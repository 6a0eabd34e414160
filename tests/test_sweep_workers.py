"""Several sweep workers on one study: real `python -m emotion_exp sweep` processes started together on one
Optuna storage (a SQLite file; the team server's PostgreSQL) and one tracking store run exactly --n_trials
trials under one parent run, and a worker stopped mid-trial (Ctrl-C, or killed outright) loses nothing: the
other runs its trial again."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import optuna
import pandas as pd
import pytest
import sqlalchemy
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from emotion_exp.workflows import sweep_storage
from tests.helpers import finish

if TYPE_CHECKING:  # its import in a spawned process would import conftest, which imports it back
    from tests.tracking_server import TrackingServer

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180  # bound on every wait for a worker; far above the seconds each needs


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen]]:
    """The test's workers; one still there when the test ends (it failed) is killed, also when frozen by SIGSTOP,
    so that it holds no lock of the session's tracking store."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_S)


def start_worker(
    workers: list[subprocess.Popen], study_name: str, dataset: Path, storage: str, log: Path, *options: str
) -> subprocess.Popen:
    """One sweep worker of the study on the tfidf stage, its output in ``log``."""
    command = [sys.executable, "-m", "emotion_exp", "sweep", "--dataset", str(dataset), "--stage", "tfidf"]
    command += ["--study_name", study_name, "--optuna_storage", storage, "--registered_model", "", *options]
    # Two workers on two cores: one torch thread each.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        workers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env))
    return workers[-1]


def trial_runs(study_name: str) -> list[mlflow.entities.Run]:
    runs = mlflow.search_runs(filter_string=f"tags.study_name = '{study_name}'", output_format="list")
    return [run for run in runs if "trial_number" in run.data.tags]


def status_now(tracking_uri: str, run_id: str) -> str | None:
    """The run's status read straight from the SQLite store, waiting 0.2 s at most: None when a frozen worker
    holds the store's lock (MLflow's own client would wait 20 s, then fail)."""
    with contextlib.closing(sqlite3.connect(tracking_uri.removeprefix("sqlite:///"), timeout=0.2)) as connection:
        try:
            return connection.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
        except sqlite3.OperationalError:
            return None


def a_trial_to_cut(study_name: str, workers: list[subprocess.Popen]) -> tuple[int, str] | None:
    """A worker (its index) that has finished a trial and runs another now; that trial's run id. Either worker
    may be the one: which is ahead of the other is the scheduler's choice (under load one has run every trial
    before the other finished its first)."""
    runs = trial_runs(study_name)
    for index, worker in enumerate(workers):
        mine = [run for run in runs if run.data.tags.get("pid") == str(worker.pid)]
        running = [run.info.run_id for run in mine if run.info.status == "RUNNING"]
        finished_one = any(run.info.status == "FINISHED" for run in mine)
        if finished_one and running:
            return index, running[0]
    return None


def stop_one_mid_trial(
    study_name: str, workers: list[subprocess.Popen], logs: list[Path], signum: int, tracking_uri: str
) -> tuple[int, str]:
    """Send ``signum`` to a worker while one of its trials runs, after it finished one (it has work to lose);
    return that worker's index and that trial's run id.

    A tfidf trial lasts about a second: the worker is frozen (SIGSTOP) as soon as it has a
    RUNNING trial run, and signalled only if that run is still RUNNING once it cannot change.
    With --n_trials 6 one of two workers runs at least 3 trials, so such a trial comes; both
    workers must still live (the other cannot leave while that trial runs).
    """
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and all(worker.poll() is None for worker in workers):
        found = a_trial_to_cut(study_name, workers)
        if found is None:
            time.sleep(0.05)
            continue
        index, run_id = found
        worker = workers[index]
        worker.send_signal(signal.SIGSTOP)
        if status_now(tracking_uri, run_id) == "RUNNING":
            worker.send_signal(signum)
            worker.send_signal(signal.SIGCONT)
            return index, run_id
        worker.send_signal(signal.SIGCONT)  # its trial ended in between, or its lock was held: try the next moment
    shown = "\n".join(f"{log.name} (exit code {w.poll()}):\n{log.read_text()[-3000:]}" for w, log in zip(workers, logs))
    pytest.fail(f"no trial to cut within {WAIT_S} s, or a worker ended first:\n{shown}")


def the_parent(study_name: str) -> mlflow.entities.Run:
    [parent] = mlflow.search_runs(
        filter_string=f"tags.stage = 'sweep' and tags.study_name = '{study_name}'", output_format="list"
    )
    return parent


def assert_the_study_is_complete(study: optuna.Study, n_trials: int, parent_id: str) -> None:
    """Exactly ``n_trials`` complete trials, nothing left RUNNING, every trial run once under the one parent."""
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    assert not [trial for trial in study.trials if trial.state == TrialState.RUNNING]
    assert study.user_attrs["parent_run_id"] == parent_id
    runs = {run.info.run_id: run for run in trial_runs(study.study_name)}
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} == {parent_id}
    for trial in complete:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["trial_number"] == str(trial.number)
    # No trial number, and no parameter set, was run by two workers.
    numbers = [run.data.tags["trial_number"] for run in runs.values()]
    assert len(numbers) == len(set(numbers))
    finished = [run for run in runs.values() if run.info.status == "FINISHED"]
    assert len({(run.data.params["C"], run.data.params["class_weight"]) for run in finished}) == n_trials
    # A trial given up because another worker had just created the last one never ran.
    given_up = [trial for trial in study.trials if "given_up" in trial.user_attrs]
    assert all(trial.state == TrialState.FAIL for trial in given_up)
    assert not {str(trial.number) for trial in given_up} & set(numbers)
    # The outcome: the table of every trial, the best trial scored on test once.
    parent = mlflow.get_run(parent_id)
    # The worker that lost the race for the parent deleted its own run.
    deleted = MlflowClient().search_runs(
        [parent.info.experiment_id], "tags.stage = 'sweep'", run_view_type=ViewType.DELETED_ONLY
    )
    assert len(deleted) <= 1 and all(run.info.status == "KILLED" for run in deleted)
    assert parent.info.status == "FINISHED" and not {"error", "resume_hint"} & set(parent.data.tags)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="sweep/trials.csv"))
    assert list(table["number"]) == [trial.number for trial in study.trials]
    assert (table["state"] == "COMPLETE").sum() == n_trials
    evaluations = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.stage = 'evaluate'", output_format="list"
    )
    assert len(evaluations) == 1 and parent.data.tags["best_trial_evaluation"] == evaluations[0].info.run_id
    assert parent.data.metrics["best_value"] == max(trial.value for trial in complete)


def processes(count: int) -> ProcessPoolExecutor:
    """``count`` processes forked from a server that imported this module once: spawned, each would import
    MLflow, Optuna and pandas again (about 4 CPU-s each). The server lives as long as this process, with the
    environment it started with: what a worker needs goes in its arguments."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    # The server runs `python -c` in the test's folder, and Python 3.11's ignores the sys.path it is given.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        multiprocessing.forkserver.ensure_running()
    return ProcessPoolExecutor(count, mp_context=context)


def claim_at(url: str, study_id: int, value: str, replacing: str | None, start: float) -> str:
    """In a process of its own: claim the study's parent for ``value`` at the wall-clock time ``start``."""
    storage = sweep_storage.open_storage(url, 1)
    time.sleep(max(0.0, start - time.time()))
    return sweep_storage.claim(storage, study_id, "parent_run_id", value, replacing)


@pytest.mark.slow
def test_a_claim_made_by_four_processes_at_once_is_won_by_one_and_all_see_it(tmp_path: Path) -> None:
    """Optuna's own set_user_attr lets the last writer win: four workers would each keep their own parent."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = sweep_storage.open_storage(url, 1)
    study_id = storage.get_study_id_from_name(optuna.create_study(storage=storage, study_name="claims").study_name)
    proposals = [f"run-{i}" for i in range(4)]
    with processes(4) as pool:
        list(pool.map(time.sleep, [0.5] * 4))  # each sleep busy when the next is submitted: four processes
        start = time.time() + 1  # every process has connected by then
        first = list(pool.map(claim_at, [url] * 4, [study_id] * 4, proposals, [None] * 4, [start] * 4))
        # A parent gone from the tracking store is replaced: only a worker that still saw the old one wins.
        start = time.time() + 1
        replacements = [f"new-{i}" for i in range(4)]
        second = list(pool.map(claim_at, [url] * 4, [study_id] * 4, replacements, [first[0]] * 4, [start] * 4))

    assert len(set(first)) == 1 and first[0] in proposals
    assert len(set(second)) == 1 and second[0] in replacements
    assert storage.get_study_user_attrs(study_id)["parent_run_id"] == second[0]


def open_storage_alembic_rows(url: str, pgpass: str) -> int:
    """In a process of its own: open the study's storage; the rows of its alembic revision table."""
    os.environ["PGPASSFILE"] = pgpass
    storage = sweep_storage.open_storage(url, 1)
    with storage.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one()


@pytest.mark.slow
def test_workers_opening_a_new_postgresql_database_at_once_all_get_one_schema(
    tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers started together each create Optuna's tables and types. One that finds the first's CREATE
    uncommitted waits for it, then fails with a unique violation; one that checked just before the first
    committed fails with DuplicateObject or DuplicateTable (a CI failure; that window is too short to force
    here). The first is this test, holding its CREATEs uncommitted until three workers wait on them."""
    import psycopg
    from optuna.storages._rdb import models

    pg_port = json.loads((tracking_server.folder / "server.json").read_text())["pg_port"]
    # The server's own pgpass (the mlflow role, any database), for this test and, as an argument, the workers.
    pgpass = str(tracking_server.folder / "secrets" / "pgpass")
    monkeypatch.setenv("PGPASSFILE", pgpass)
    database = f"race_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host="127.0.0.1", port=pg_port, user="mlflow", dbname="postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        url = f"postgresql+psycopg://mlflow@127.0.0.1:{pg_port}/{database}"
        engine = sqlalchemy.create_engine(url)
        with processes(3) as pool:
            with engine.connect() as first:
                created = first.begin()
                models.BaseModel.metadata.create_all(first)
                workers = [pool.submit(open_storage_alembic_rows, url, pgpass) for _ in range(3)]
                waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
                deadline = time.monotonic() + WAIT_S
                while admin.execute(waiting, [database]).fetchone()[0] < 3 and not any(w.done() for w in workers):
                    assert time.monotonic() < deadline, f"the workers did not reach the schema within {WAIT_S} s"
                    time.sleep(0.05)
                created.commit()
            assert [worker.result(timeout=WAIT_S) for worker in workers] == [1, 1, 1]
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)], ids=["ctrl-c", "kill-9"]
)
def test_a_worker_stopped_mid_trial_loses_nothing_and_the_other_completes_the_study(
    signum: int,
    code: int,
    workers: list[subprocess.Popen],
    small_dataset: Path,
    tmp_path: Path,
    tracking_uri: str,
    isolated_mlflow: str,
) -> None:
    """Ctrl-C: the stopped worker marks its trial FAIL and its run KILLED. Killed outright, it marks
    nothing: its trial's heartbeat stops, and the other worker fails the trial after 2 heartbeats."""
    name, storage, n_trials = f"sweep-{uuid.uuid4().hex[:8]}", f"sqlite:///{tmp_path}/optuna.db", 6
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    options = ("--n_trials", str(n_trials), "--heartbeat", "1")
    for log in logs:
        start_worker(workers, name, small_dataset, storage, log, *options)

    index, cut_run = stop_one_mid_trial(name, workers, logs, signum, tracking_uri)

    stopped, remaining = workers[index], workers[1 - index]
    stopped_log, remaining_log = logs[index], logs[1 - index]
    assert finish(stopped, stopped_log) == code, stopped_log.read_text()[-3000:]
    assert finish(remaining, remaining_log) == 0, remaining_log.read_text()[-3000:]
    study = optuna.load_study(study_name=name, storage=storage)
    cut = study.trials[int(mlflow.get_run(cut_run).data.tags["trial_number"])]
    assert cut.state == TrialState.FAIL
    assert_the_study_is_complete(study, n_trials, the_parent(name).info.run_id)
    if signum == signal.SIGINT:
        assert mlflow.get_run(cut_run).info.status == "KILLED"
        assert "Resume the study with" in stopped_log.read_text()
    else:
        assert f"trial(s) {cut.number} of study {name!r} were cut off" in remaining_log.read_text()


@pytest.mark.slow
def test_two_workers_share_one_study_on_the_team_servers_postgresql(
    tracking_server: TrackingServer,
    on_server: str,
    workers: list[subprocess.Popen],
    small_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The team recipe: the server as tracking URI, its `optuna` database as storage, the password in a pgpass file."""
    password = (tracking_server.folder / "secrets" / "optuna-password").read_text().strip()
    pg_port = json.loads((tracking_server.folder / "server.json").read_text())["pg_port"]
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_port}:optuna:optuna:{password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # the workers' and this test's
    name, n_trials = f"sweep-{uuid.uuid4().hex[:8]}", 2  # a trial through the server takes 10 to 20 s
    storage = f"postgresql+psycopg://optuna@127.0.0.1:{pg_port}/optuna"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    for log in logs:
        start_worker(workers, name, small_dataset, storage, log, "--n_trials", str(n_trials))

    codes = [finish(worker, log) for worker, log in zip(workers, logs, strict=True)]

    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    assert_the_study_is_complete(
        optuna.load_study(study_name=name, storage=storage), n_trials, the_parent(name).info.run_id
    )
