"""The study's decisions and dead trials through Optuna's public API, with our own lock table beside its tables.

The races themselves (workers at once) are test_sweep_workers.py's; here each rule on one process.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from emotion_exp.workflows import sweep_storage

# The tests create trials with study.ask(), as a worker killed before its objective leaves them.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture
def opened(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage, int]:
    """A study on its own database (heartbeat every second), the storage and the study's id."""
    storage = sweep_storage.open_storage(f"sqlite:///{tmp_path}/optuna.db", 1)
    study = optuna.create_study(storage=storage, study_name="decisions")
    return study, storage, storage.get_study_id_from_name(study.study_name)


def test_a_claim_sets_a_user_attribute_once_and_a_release_frees_it(opened) -> None:
    study, storage, study_id = opened

    assert sweep_storage.claim(storage, study_id, "parent_run_id", "first") == "first"
    assert sweep_storage.claim(storage, study_id, "parent_run_id", "second") == "first"
    assert study.user_attrs["parent_run_id"] == "first"  # where Optuna's users look
    # Replaced only while it still holds what the claimer saw.
    assert sweep_storage.claim(storage, study_id, "parent_run_id", "third", replacing="second") == "first"
    assert sweep_storage.claim(storage, study_id, "parent_run_id", "third", replacing="first") == "third"

    sweep_storage.release(storage, study_id, "parent_run_id", "not mine")
    assert study.user_attrs["parent_run_id"] == "third"
    sweep_storage.release(storage, study_id, "parent_run_id", "third")
    assert sweep_storage.claim(storage, study_id, "parent_run_id", "fourth") == "fourth"
    with storage.engine.connect() as connection:
        assert connection.execute(sqlalchemy.select(sweep_storage.CLAIM_LOCKS)).all() == []  # no lock left behind


def lock(storage: optuna.storages.RDBStorage, study_id: int, age_s: float = 0) -> None:
    """Hold the lock of ``parent_run_id`` as another worker would, taken ``age_s`` ago by the database's clock."""
    with storage.engine.begin() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        row = {"study_id": study_id, "key": "parent_run_id", "holder": "another worker"}
        taken_at = now.replace(tzinfo=None) - timedelta(seconds=age_s)
        connection.execute(sqlalchemy.insert(sweep_storage.CLAIM_LOCKS).values(**row, taken_at=taken_at))


def test_a_claim_waits_while_another_worker_holds_the_lock(opened) -> None:
    _, storage, study_id = opened
    lock(storage, study_id)
    claimed: list[str] = []
    claimer = threading.Thread(
        target=lambda: claimed.append(sweep_storage.claim(storage, study_id, "parent_run_id", "mine"))
    )
    claimer.start()
    time.sleep(0.5)
    assert claimed == [] and claimer.is_alive()

    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.delete(sweep_storage.CLAIM_LOCKS))
    claimer.join(timeout=30)

    assert claimed == ["mine"]


def test_a_lock_abandoned_by_a_killed_worker_is_taken_over(opened) -> None:
    _, storage, study_id = opened
    lock(storage, study_id, age_s=sweep_storage.ABANDONED_S + 5)

    assert sweep_storage.claim(storage, study_id, "parent_run_id", "mine") == "mine"


def test_a_running_trial_never_started_by_the_objective_is_failed_after_the_grace_period(opened) -> None:
    study, storage, _ = opened
    unstarted = study.ask()  # its worker was killed before the objective: no heartbeat, which Optuna never fails
    started = study.ask()
    sweep_storage.mark_started(started)
    silent_since: dict[int, float] = {}

    assert sweep_storage.fail_dead_trials(study, storage, silent_since) == []  # seen now: not yet
    silent_since[unstarted.number] -= storage.grace_period

    assert sweep_storage.fail_dead_trials(study, storage, silent_since) == [unstarted.number]
    states = {trial.number: trial.state for trial in study.trials}
    assert states == {unstarted.number: TrialState.FAIL, started.number: TrialState.RUNNING}


@pytest.mark.slow  # waits out the heartbeat's grace period
def test_a_trial_whose_heartbeat_stopped_is_failed_and_queued_again_with_its_parameters(opened) -> None:
    study, storage, study_id = opened
    trial = study.ask()
    trial.suggest_float("C", 0.01, 100, log=True)
    sweep_storage.mark_started(trial)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    time.sleep(storage.grace_period + 1.1)  # the database's clock counts whole seconds

    assert sweep_storage.fail_dead_trials(study, storage, {}) == [trial.number]

    failed, queued = study.trials
    assert (failed.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert queued.params == failed.params
