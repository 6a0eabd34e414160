"""The sweep stage: an Optuna study over one stage's parameters, every trial a nested run.

Trials are selected on the validation split alone: they run their stage with the test split
unscored, and the best trial's model scores the test split once, at the end, on the parent
run (``best_test_accuracy``). Fine-tuning trials report validation F1 each epoch to Optuna's
median pruner; a pruned trial's run ends KILLED with the tag ``pruned=true`` and keeps what it
logged. The study lives in its own Optuna database (never MLflow's: both keep their schema
revision in alembic's ``alembic_version`` table), so ``--study_name`` resumes it.

Several workers (processes, on one machine or many) run one study when they share its
``--study_name`` and ``--optuna_storage``: between them they run exactly ``--n_trials`` trials
(each counts the study's complete, pruned and running trials before each new one), all under one
parent run (the first worker's, claimed in the study), and each waits for the others' running
trials, so that a trial a stopped worker lost is run again by one still there.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.distributions import (
    BaseDistribution,
)
from optuna.trial import TrialState

from emotion_exp import catalog, data, interrupts, plots, tracking
from emotion_exp.catalog import SweepConfig
from emotion_exp.config import DataConfig, ExtractConfig, subset
from emotion_exp.errors import EndedEarly, UserError
from emotion_exp.stages import extract
from emotion_exp.stages.skeleton import log_dataset, log_figure, open_stage, warn_train_overlap
from emotion_exp.workflows import search_space, sweep_outcome, sweep_storage

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits

# Trials are compared by the project's promotion metric; fine-tuning reports its per-epoch twin.
EPOCH_OBJECTIVE = "eval_f1_weighted"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED_STATES = (*FINISHED_STATES, TrialState.RUNNING)
"""The trials that count towards ``--n_trials`` before a new one starts: a running trial is another
worker's, and counts until it fails (a WAITING trial, enqueued, is the next one a worker takes)."""
POLL_S = 1.0
"""How often a worker that has nothing left to start looks whether the others' running trials ended."""


class Surplus(Exception):
    """A trial created while another worker created the study's last one: it is given up, never run."""


# --- the study ----------------------------------------------------------------------------------


def open_study(
    config: SweepConfig, storage: optuna.storages.RDBStorage, study_name: str, space: str, digest: str
) -> optuna.Study:
    """Create the study, or load it to resume (or to join its other workers) after checking it searches
    the same thing on the same data.

    What a study searches is claimed by the first worker; the others compare theirs with it.
    """
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_epochs
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=trial_sampler(config, 0),
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    study_id = storage.get_study_id_from_name(study_name)
    wanted = (("--stage", "stage", config.stage), ("the search space", "search_space", space))
    wanted += (("the dataset digest", "dataset_digest", digest),)
    recorded = {key: sweep_storage.claim(storage, study_id, key, value) for _, key, value in wanted}
    mismatches = [
        f"{what} was {recorded[key]!r}, now {value!r}" for what, key, value in wanted if recorded[key] != value
    ]
    if mismatches:
        raise UserError(
            f"--study_name {study_name} names a study in {sweep_storage.shown_storage(storage.url)} that searched "
            "something else ("
            + "; ".join(mismatches)
            + "). Resume it with its own options, or pick a new --study_name."
        )
    return study


def trial_sampler(config: SweepConfig, number: int) -> optuna.samplers.BaseSampler:
    """TPE seeded by ``--seed`` and the trial's number: reproducible, and never the same draw in two workers."""
    return optuna.samplers.TPESampler(seed=config.seed + number)


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--n_trials``: complete or pruned (failed and interrupted ones are redone)."""
    return sum(trial.state in FINISHED_STATES for trial in study.trials)


def run(config: SweepConfig) -> str:
    """Run (or resume, or join) the study, every trial a nested run; log the outcome on the parent; return its id."""
    space = search_space.search_space(config.stage, config.search_space)
    url = sweep_storage.resolve_storage(config.optuna_storage, mlflow.get_tracking_uri())
    storage = sweep_storage.open_storage(url, config.heartbeat)
    shown = sweep_storage.shown_storage(url)
    splits = data.load_splits(subset(config, DataConfig))
    warn_train_overlap("sweep", splits)
    study_name = config.study_name or f"sweep-{config.stage}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    study = open_study(config, storage, study_name, search_space.space_description(space), splits.digest)
    study_id = storage.get_study_id_from_name(study_name)
    previous_parent = study.user_attrs.get("parent_run_id")
    parent_to_open, created = _parent_run(storage, study_id, previous_parent)
    # The parent holds the data (its inputs, and the label distribution drawn once); every trial gets the same splits.
    # Every reader of the run sees its params: the storage's password stays out of them.
    masked = sweep_storage.shown_storage(config.optuna_storage) if config.optuna_storage else ""
    logged = dataclasses.replace(config, optuna_storage=masked)
    with open_stage("sweep", logged, splits=splits, run_id=parent_to_open, label_plot=False) as parent:
        parent_id = parent.run_id
        if created:
            log_dataset(splits)
            log_figure(
                plots.label_distribution(splits.train["label"], splits.label_names), "plots/label_distribution.png"
            )
        if parent_to_open is None:  # `mlflow run`'s own run is this worker's parent
            study.set_user_attr("parent_run_id", parent_id)
        sweep_outcome.set_tags(
            {"study_name": study_name, "optuna_storage": shown, "search_space": search_space.space_description(space)}
        )
        if previous_parent and previous_parent != parent_id:
            sweep_outcome.set_tags({"continues_run_id": previous_parent})
        reads_features = catalog.STAGES[config.stage].reads_features
        features_run_id = extract.run(subset(config, ExtractConfig), splits=splits) if reads_features else ""
        current = _CurrentTrial()
        objective = _objective(config, space, study_name, features_run_id, splits, current)
        missing = config.n_trials - sum(trial.state in COUNTED_STATES for trial in study.trials)
        print(f"sweep: study {study_name!r} in {shown}: {max(missing, 0)} trial(s) to run.")
        try:
            with interrupts.stop_on_signals():
                run_trials(study, storage, objective, config)
        except KeyboardInterrupt:
            current.give_up(study)
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                sweep_outcome.log_study(study)  # else a worker still running writes it when the study is done
            hint = resume_hint(config, study_name, study)
            sweep_outcome.set_tags({"resume_hint": hint})
            print(f"\n{hint}", file=sys.stderr, flush=True)
            raise
        for stale in sorted({"error", "resume_hint"} & set(MlflowClient().get_run(parent_id).data.tags)):
            MlflowClient().delete_tag(parent_id, stale)  # another worker's interruption no longer describes the run
        sweep_outcome.log_study(study)
        best = sweep_outcome.best_trial(study, study_name)
        _score_once(storage, study_id, best, parent_id, splits, config)
        return parent_id


def _parent_run(storage: optuna.storages.RDBStorage, study_id: int, previous: str | None) -> tuple[str | None, bool]:
    """The run to open as the study's parent, and whether this worker has just created it.

    Under ``mlflow run`` the launcher's run (None here: the stage attaches to it). Otherwise the
    study's parent when the tracking store still has it, whatever its state (another worker may
    be running under it); else a new run, which becomes the parent only if this worker's claim
    wins: a worker that lost deletes its own and adopts the winner's.
    """
    if tracking.launcher_run_id():
        return None, False
    if previous and tracking.find_run(previous) is not None:
        return previous, False
    created = tracking.create_run("sweep")
    parent = sweep_storage.claim(storage, study_id, "parent_run_id", created, replacing=previous)
    if parent != created:
        MlflowClient().set_terminated(created, "KILLED")
        MlflowClient().delete_run(created)
    return parent, parent == created


class _CurrentTrial:
    """The trial this worker runs now, so that an interruption never leaves it RUNNING."""

    number: int | None = None

    def give_up(self, study: optuna.Study) -> None:
        """Mark this worker's trial FAIL if the interruption struck outside Optuna's own handling of it."""
        if self.number is None:
            return
        [trial] = [t for t in study.get_trials(deepcopy=False) if t.number == self.number]
        if trial.state == TrialState.RUNNING:
            study.tell(self.number, state=TrialState.FAIL)


def run_trials(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    objective: Callable[[optuna.Trial], float],
    config: SweepConfig,
) -> None:
    """Run trials until the study holds ``--n_trials`` complete or pruned ones, between all its workers.

    Before each trial the study's complete, pruned and running trials are counted; with enough,
    the worker waits while others' trials run (one that fails is run again here) and leaves when
    none is left. Trials of killed workers are failed first (their heartbeat stopped).
    """
    deadline = time.monotonic() + config.timeout if config.timeout else None
    waiting_for: list[int] = []
    silent_since: dict[int, float] = {}
    while True:
        dead = sweep_storage.fail_dead_trials(study, storage, silent_since)
        if dead:
            print(
                f"sweep: trial(s) {', '.join(map(str, dead))} of study {study.study_name!r} were cut off (no heartbeat "
                f"from their worker for {2 * config.heartbeat} s): marked FAIL, and run again."
            )
        trials = study.get_trials(deepcopy=False)
        running = [trial.number for trial in trials if trial.state == TrialState.RUNNING]
        if sum(trial.state in COUNTED_STATES for trial in trials) >= config.n_trials:
            if not running:
                return
            if running != waiting_for:
                print(f"sweep: waiting for trial(s) {', '.join(map(str, running))}, run by other workers.")
                waiting_for = running
            time.sleep(POLL_S)
            continue
        if deadline is not None and time.monotonic() > deadline:
            return
        study.optimize(objective, n_trials=1, catch=(Surplus,))


def _score_once(
    storage: optuna.storages.RDBStorage,
    study_id: int,
    best: optuna.trial.FrozenTrial,
    parent_id: str,
    splits: DatasetSplits,
    config: SweepConfig,
) -> None:
    """Score the best trial on test and register it, once per parent and best trial whatever the workers."""
    key, mine = f"scored:{parent_id}:{best.number}", f"worker {tracking.owner_tags()['pid']} {uuid.uuid4().hex}"
    if sweep_storage.claim(storage, study_id, key, mine) != mine:
        print(
            f"sweep: best trial {best.number} is scored on the test split once, under this parent, by another "
            "worker of the study (or by an earlier run of it)."
        )
        return
    try:
        sweep_outcome.score_best(best, splits, config, config.registered_model, config.stage)
    except BaseException:
        sweep_storage.release(storage, study_id, key, mine)  # a later run scores it
        raise


def _objective(
    config: SweepConfig,
    space: dict[str, BaseDistribution],
    study_name: str,
    features_run_id: str,
    splits: DatasetSplits,
    current: _CurrentTrial,
) -> Callable[[optuna.Trial], float]:
    stage = catalog.STAGES[config.stage]
    base = dataclasses.replace(subset(config, stage.config), **stage.set_by_workflows(features_run_id))

    def objective(trial: optuna.Trial) -> float:
        sweep_storage.mark_started(trial)
        current.number = trial.number
        ahead = [
            t for t in trial.study.get_trials(deepcopy=False) if t.state in COUNTED_STATES and t.number < trial.number
        ]
        if len(ahead) >= config.n_trials:  # another worker created the last trial at the same moment
            reason = f"the study already had {len(ahead)} trials when this one was created"
            trial.set_user_attr("given_up", reason)
            raise Surplus(reason)
        trial.study.sampler = trial_sampler(config, trial.number)
        params = {name: search_space.suggest(trial, name, distribution) for name, distribution in space.items()}
        trial_config = dataclasses.replace(base, **params)
        labels = tracking.RunLabels(tags={"trial_number": trial.number, "study_name": study_name})
        try:
            callbacks = {"callbacks": [pruning_callback(trial)]} if stage.reports_epochs else {}
            run_id = stage.run(trial_config, splits=splits, score_test=False, labels=labels, **callbacks)
        except EndedEarly as pruned:
            _remove_checkpoints(trial_config, labels.run_id)
            raise optuna.TrialPruned(str(pruned)) from None
        finally:
            if labels.run_id:  # known also when the trial failed
                trial.set_user_attr("mlflow_run_id", labels.run_id)
        value = MlflowClient().get_run(run_id).data.metrics[sweep_outcome.OBJECTIVE]
        mlflow.log_metrics({f"trial_{sweep_outcome.OBJECTIVE}": value}, step=trial.number)
        return value

    return objective


def _remove_checkpoints(trial_config: Any, run_id: str | None) -> None:
    """A pruned fine-tuning trial is never resumed: its checkpoints are dead weight."""
    folder = Path(getattr(trial_config, "output_dir", "")) / (run_id or "")
    if run_id and folder.is_dir():
        shutil.rmtree(folder)


def pruning_callback(trial: optuna.Trial) -> Any:
    """A Trainer callback that reports validation F1 each epoch and ends a trial the pruner gives up on."""
    return _pruning_callback_class()(trial)


@functools.cache
def _pruning_callback_class() -> type:
    from transformers import TrainerCallback

    class OptunaPruning(TrainerCallback):
        def __init__(self, trial: optuna.Trial) -> None:
            self.trial = trial

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if not metrics or EPOCH_OBJECTIVE not in metrics:
                return
            epoch = round(state.epoch or 0)
            self.trial.report(metrics[EPOCH_OBJECTIVE], epoch)
            if self.trial.should_prune():
                raise EndedEarly(
                    f"pruned by the median pruner after epoch {epoch}: validation F1 {metrics[EPOCH_OBJECTIVE]:.4f} "
                    "is below the median of earlier trials at that epoch",
                    {"pruned": "true", "pruned_at_epoch": str(epoch)},
                )

    return OptunaPruning


def resume_hint(config: SweepConfig, study_name: str, study: optuna.Study) -> str:
    """How to continue an interrupted sweep: the same options and the study's name."""
    defaults = SweepConfig()
    changed = {
        name: sweep_storage.shown_storage(value) if name == "optuna_storage" else value
        for name, value in dataclasses.asdict(config).items()
        if value != getattr(defaults, name) and name != "study_name"
    }
    options = "".join(f" --{name} {_quoted(value)}" for name, value in changed.items())
    parameters = "".join(f" -P {name}={_quoted(value)}" for name, value in changed.items())
    return (
        f"Sweep interrupted with {finished_trials(study)} of {config.n_trials} trials finished (the interrupted "
        "trial is redone). Resume the study with:\n"
        f"  emotion-exp sweep{options} --study_name {study_name}\n"
        f"  mlflow run . -e sweep{parameters} -P study_name={study_name}"
    )


def _quoted(value: Any) -> str:
    text = str(value)
    return f"'{text}'" if not text or any(c in text for c in " |,;") else text
