"""The sweep stage: an Optuna study over one stage's parameters, every trial a nested run.

Trials are selected on the validation split alone: they run their stage with the test split
unscored, and the best trial's model scores the test split once, at the end, on the parent
run (``best_test_accuracy``). Fine-tuning trials report validation F1 each epoch to Optuna's
median pruner; a pruned trial's run ends KILLED with the tag ``pruned=true`` and keeps what it
logged. The study lives in its own Optuna database (never MLflow's: both keep their schema
revision in alembic's ``alembic_version`` table), so ``--study_name`` resumes it.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import sys
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
from emotion_exp.config import STAGE_CONFIGS, DataConfig, ExtractConfig, SweepConfig, subset
from emotion_exp.errors import EndedEarly, UserError
from emotion_exp.stages import extract
from emotion_exp.stages.skeleton import log_figure, open_stage
from emotion_exp.workflows import search_space, sweep_outcome, sweep_storage

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits

# Trials are compared by the project's promotion metric; fine-tuning reports its per-epoch twin.
EPOCH_OBJECTIVE = "eval_f1_weighted"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


# --- the study ----------------------------------------------------------------------------------


def open_study(config: SweepConfig, storage: str, study_name: str, space: str, digest: str) -> optuna.Study:
    """Create the study, or load it to resume after checking it searches the same thing on the same data."""
    existing = {summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    finished = 0
    if study_name in existing:
        study = optuna.load_study(study_name=study_name, storage=storage)
        recorded = study.user_attrs
        mismatches = [
            f"{what} was {recorded.get(key)!r}, now {value!r}"
            for what, key, value in (
                ("--stage", "stage", config.stage),
                ("the search space", "search_space", space),
                ("the dataset digest", "dataset_digest", digest),
            )
            if recorded.get(key) != value
        ]
        if mismatches:
            raise UserError(
                f"--study_name {study_name} names a study in {sweep_storage.shown_storage(storage)} that searched "
                "something else ("
                + "; ".join(mismatches)
                + "). Resume it with its own options, or pick a new --study_name."
            )
        finished = sum(trial.state in FINISHED_STATES for trial in study.trials)
    sampler = optuna.samplers.TPESampler(seed=config.seed + finished)  # a resumed study draws new points
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_epochs
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    if study_name not in existing:
        for key, value in (("stage", config.stage), ("search_space", space), ("dataset_digest", digest)):
            study.set_user_attr(key, value)
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--n_trials``: complete or pruned (failed and interrupted ones are redone)."""
    return sum(trial.state in FINISHED_STATES for trial in study.trials)


def run(config: SweepConfig) -> str:
    """Run (or resume) the study with every trial a nested run; log the outcome on the parent; return its id."""
    space = search_space.search_space(config.stage, config.search_space)
    storage = sweep_storage.resolve_storage(config.optuna_storage, mlflow.get_tracking_uri())
    splits = data.load_splits(subset(config, DataConfig))
    study_name = config.study_name or f"sweep-{config.stage}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    study = open_study(config, storage, study_name, search_space.space_description(space), splits.digest)
    previous_parent = study.user_attrs.get("parent_run_id")
    reopened = _parent_to_reopen(previous_parent)
    interrupted = fail_interrupted_trials(study, previous_parent)
    if interrupted:
        print(
            f"sweep: trial(s) {', '.join(map(str, interrupted))} of study {study_name!r} were cut off (their process "
            "is gone): marked FAIL, and run again."
        )
    # The parent holds the data (its inputs, and the label distribution drawn once); every trial gets the same splits.
    # Every reader of the run sees its params: the storage's password stays out of them.
    masked = sweep_storage.shown_storage(config.optuna_storage) if config.optuna_storage else ""
    logged = dataclasses.replace(config, optuna_storage=masked)
    with open_stage("sweep", logged, splits=splits, run_id=reopened, label_plot=False) as parent:
        parent_id = parent.run_id
        if reopened is None:
            log_figure(
                plots.label_distribution(splits.train["label"], splits.label_names), "plots/label_distribution.png"
            )
        else:  # the interruption is over: its reason and hint no longer describe the run
            stale = {"error", "resume_hint"} & set(MlflowClient().get_run(parent_id).data.tags)
            for tag in sorted(stale):
                MlflowClient().delete_tag(parent_id, tag)
        study.set_user_attr("parent_run_id", parent_id)
        sweep_outcome.set_tags(
            {
                "study_name": study_name,
                "optuna_storage": sweep_storage.shown_storage(storage),
                "search_space": search_space.space_description(space),
            }
        )
        if previous_parent and previous_parent != parent_id:
            sweep_outcome.set_tags({"continues_run_id": previous_parent})
        probe_features = catalog.STAGES[config.stage].reads_features
        features_run_id = extract.run(subset(config, ExtractConfig), splits=splits) if probe_features else ""
        objective = _objective(config, space, study_name, features_run_id, splits)
        missing = config.n_trials - finished_trials(study)
        shown = sweep_storage.shown_storage(storage)
        print(f"sweep: study {study_name!r} in {shown}: {max(missing, 0)} trial(s) to run.")
        try:
            with interrupts.stop_on_signals():
                if missing > 0:
                    study.optimize(objective, n_trials=missing, timeout=config.timeout or None)
        except KeyboardInterrupt:
            sweep_outcome.log_study(study)
            hint = resume_hint(config, study_name, study)
            sweep_outcome.set_tags({"resume_hint": hint})
            print(f"\n{hint}", file=sys.stderr, flush=True)
            raise
        sweep_outcome.log_study(study)
        best = sweep_outcome.best_trial(study, study_name)
        sweep_outcome.score_best(best, splits, config, config.registered_model, config.stage)
        return parent_id


def _parent_to_reopen(previous_parent: str | None) -> str | None:
    """The earlier parent run, reopened when resuming from the CLI (``mlflow run`` brings its own run)."""
    if not previous_parent or tracking.launcher_run_id():
        return None
    record = tracking.find_run(previous_parent)
    if record is None:
        return None  # the study outlived its tracking store: the trials go under a new parent
    state, detail = tracking.process_state(record.tags)
    if record.status == "RUNNING" and state == tracking.ALIVE:
        raise UserError(
            f"The study's sweep run {previous_parent} is still RUNNING and its {detail}; two processes would "
            "run one study. Stop it first (Ctrl-C ends its current trial), then resume."
        )
    return previous_parent


def fail_interrupted_trials(study: optuna.Study, previous_parent: str | None) -> list[int]:
    """Mark FAIL the trials a killed process left RUNNING in ``study``; return their numbers.

    A trial killed outright (``kill -9``, out of memory) never reports, and Optuna keeps it
    RUNNING for ever. Only when the study's parent run has no live owner: a process that still
    runs the study (an ``mlflow run`` started elsewhere) owns its running trials.
    """
    record = tracking.find_run(previous_parent) if previous_parent else None
    if record is not None and record.status == "RUNNING" and tracking.process_state(record.tags)[0] == tracking.ALIVE:
        return []
    running = [trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in running:
        study.tell(number, state=TrialState.FAIL)
    return running


def _objective(
    config: SweepConfig,
    space: dict[str, BaseDistribution],
    study_name: str,
    features_run_id: str,
    splits: DatasetSplits,
) -> Callable[[optuna.Trial], float]:
    stage = catalog.STAGES[config.stage]
    base = dataclasses.replace(subset(config, STAGE_CONFIGS[config.stage]), registered_model="")
    if stage.reads_features:
        base = dataclasses.replace(base, features_run_id=features_run_id)

    def objective(trial: optuna.Trial) -> float:
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
