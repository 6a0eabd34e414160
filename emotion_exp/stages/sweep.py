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
import json
import math
import shutil
import sys
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState

from emotion_exp import catalog, console, data, interrupts, plots, registry, significance, tracking
from emotion_exp.config import STAGE_CONFIGS, DataConfig, EvaluateConfig, ExtractConfig, SweepConfig, subset
from emotion_exp.data import LabelledData
from emotion_exp.errors import EndedEarly, UserError
from emotion_exp.stages import evaluate, extract
from emotion_exp.stages.skeleton import log_figure, open_stage

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits

# Trials are compared by the project's promotion metric; fine-tuning reports its per-epoch twin.
OBJECTIVE = "val_f1_weighted"
EPOCH_OBJECTIVE = "eval_f1_weighted"
INT_PARAMS = ("epochs", "batch_size", "max_length", "max_iter")
FLOAT_PARAMS = ("learning_rate", "warmup", "weight_decay", "C")
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def _set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


# --- the search space ---------------------------------------------------------------------------


def search_space(stage: str, overrides: str = "") -> dict[str, BaseDistribution]:
    """The stage's default space (``catalog``) with ``overrides`` (``--search_space``) applied, then checked.

    ``NAME=LOW..HIGH`` is a range (``:log`` for log-uniform; whole numbers for integer parameters),
    ``NAME=A|B`` a choice and ``NAME=VALUE`` a fixed value.
    """
    declared = catalog.STAGES[stage]
    space = {
        name.strip(): _distribution(name.strip(), spec.strip(), item)
        for item in declared.search_space.split(",")
        for name, _, spec in [item.partition("=")]
    }
    named: set[str] = set()
    for item in (part.strip() for part in overrides.split(",")):
        if not item:
            continue
        name, equals, spec = (text.strip() for text in item.partition("="))
        if not equals or not spec:
            raise UserError(f"--search_space entries look like NAME=LOW..HIGH, NAME=A|B or NAME=VALUE; got {item!r}.")
        if name in named:
            raise UserError(
                f"--search_space names {name} twice ({overrides!r}); give each parameter once: a choice is "
                f"{name}=A|B, a range {name}=LOW..HIGH."
            )
        named.add(name)
        if name not in declared.searchable:
            raise UserError(
                f"--search_space: {name!r} is not searchable for the {stage} stage; expected one of "
                f"{', '.join(declared.searchable)}."
            )
        space[name] = _distribution(name, spec, item)
    for name, distribution in space.items():
        _check_values(stage, name, distribution)
    return space


def _distribution(name: str, spec: str, item: str) -> BaseDistribution:
    if ".." in spec:
        bounds, _, scale = spec.partition(":")
        low_text, _, high_text = bounds.partition("..")
        if scale not in ("", "log"):
            raise UserError(f"--search_space {item!r}: a range ends with ':log' or nothing; got ':{scale}'.")
        low, high = _value(name, low_text.strip(), item), _value(name, high_text.strip(), item)
        if not isinstance(low, (int, float)) or not low < high or (scale == "log" and low <= 0):
            raise UserError(
                f"--search_space {item!r}: a range needs numbers LOW < HIGH (LOW > 0 for :log); got {spec!r}."
            )
        if name in INT_PARAMS:
            return IntDistribution(int(low), int(high), log=scale == "log")
        return FloatDistribution(float(low), float(high), log=scale == "log")
    return CategoricalDistribution(tuple(_value(name, value.strip(), item) for value in spec.split("|")))


def _value(name: str, text: str, item: str) -> Any:
    try:
        if name in INT_PARAMS:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if name in FLOAT_PARAMS:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
    except ValueError:
        kind = "whole numbers" if name in INT_PARAMS else "finite numbers"
        raise UserError(f"--search_space {item!r}: {name} takes {kind}; got {text!r}.") from None
    return text


def _check_values(stage: str, name: str, distribution: BaseDistribution) -> None:
    """Build the stage's config with the space's extreme values, so a bad range fails before any trial."""
    if isinstance(distribution, CategoricalDistribution):
        values = distribution.choices
    else:
        values = (distribution.low, distribution.high)
    for value in values:
        STAGE_CONFIGS[stage](**{name: value})


def space_description(space: dict[str, BaseDistribution]) -> str:
    """The space as the JSON the study records, to refuse resuming a study with another space."""
    return json.dumps({name: json.loads(distribution_to_json(d)) for name, d in sorted(space.items())})


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """Ask the trial for a value of ``name`` from ``distribution``."""
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
    return trial.suggest_categorical(name, distribution.choices)


# --- the study's storage ------------------------------------------------------------------------


def resolve_storage(optuna_storage: str, tracking_uri: str) -> str:
    """The Optuna storage URL: as given, or a sqlite file ``optuna.db`` beside a local tracking store.

    Refuses the tracking store's own database, and guesses nothing for a remote tracking store.
    """
    storage = optuna_storage or _default_storage(tracking_uri)
    if _database_of(storage) is not None and _database_of(storage) == _database_of(tracking_uri):
        raise UserError(
            f"--optuna_storage {storage} is the MLflow tracking store's own database ({tracking_uri}); both keep "
            "their schema revision in alembic's alembic_version table, so they must not share one. Pass another "
            "database (a sqlite file such as sqlite:///optuna.db, or a second PostgreSQL database)."
        )
    return storage


def _default_storage(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        folder = Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
        return f"sqlite:///{folder.parent / 'optuna.db'}"
    raise UserError(
        f"The tracking store {tracking_uri} is not a local file, so there is no obvious place for the Optuna "
        "study: pass --optuna_storage, e.g. a second database on the tracking server's PostgreSQL "
        "(postgresql://USER:PASSWORD@HOST/optuna) that every machine of the sweep reaches, or "
        "sqlite:///optuna.db for a study kept on this machine only."
    )


def _database_of(url: str) -> tuple[str, ...] | None:
    """What identifies a SQL database behind a URL (backend, host, port, database), or None for other URLs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (backend, str(Path(parsed.database or "").expanduser().resolve()))
    return (backend, parsed.host or "", str(parsed.port or ""), parsed.database or "")


def shown_storage(storage: str) -> str:
    """The storage URL without its password, for tags and messages."""
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


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
                f"--study_name {study_name} names a study in {shown_storage(storage)} that searched something else ("
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
    space = search_space(config.stage, config.search_space)
    storage = resolve_storage(config.optuna_storage, mlflow.get_tracking_uri())
    splits = data.load_splits(subset(config, DataConfig))
    study_name = config.study_name or f"sweep-{config.stage}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    study = open_study(config, storage, study_name, space_description(space), splits.digest)
    previous_parent = study.user_attrs.get("parent_run_id")
    reopened = _parent_to_reopen(previous_parent)
    interrupted = fail_interrupted_trials(study, previous_parent)
    if interrupted:
        print(
            f"sweep: trial(s) {', '.join(map(str, interrupted))} of study {study_name!r} were cut off (their process "
            "is gone): marked FAIL, and run again."
        )
    # The parent holds the data (its inputs, and the label distribution drawn once); every trial gets the same splits.
    with open_stage("sweep", config, splits=splits, run_id=reopened, label_plot=False) as parent:
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
        _set_tags(
            {
                "study_name": study_name,
                "optuna_storage": shown_storage(storage),
                "search_space": space_description(space),
            }
        )
        if previous_parent and previous_parent != parent_id:
            _set_tags({"continues_run_id": previous_parent})
        probe_features = catalog.STAGES[config.stage].reads_features
        features_run_id = extract.run(subset(config, ExtractConfig), splits=splits) if probe_features else ""
        objective = _objective(config, space, study_name, features_run_id, splits)
        missing = config.n_trials - finished_trials(study)
        print(f"sweep: study {study_name!r} in {shown_storage(storage)}: {max(missing, 0)} trial(s) to run.")
        try:
            with interrupts.stop_on_signals():
                if missing > 0:
                    study.optimize(objective, n_trials=missing, timeout=config.timeout or None)
        except KeyboardInterrupt:
            log_study(study)
            hint = resume_hint(config, study_name, study)
            _set_tags({"resume_hint": hint})
            print(f"\n{hint}", file=sys.stderr, flush=True)
            raise
        log_study(study)
        best = _best_trial(study, study_name)
        score_best(best, splits, config, config.registered_model, config.stage)
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
        params = {name: suggest(trial, name, distribution) for name, distribution in space.items()}
        trial_config = dataclasses.replace(base, **params)
        tags = {"trial_number": trial.number, "study_name": study_name}
        with tracking.next_stage_run(tags=tags) as started:
            try:
                callbacks = {"callbacks": [pruning_callback(trial)]} if stage.reports_epochs else {}
                run_id = stage.run(trial_config, splits=splits, score_test=False, **callbacks)
            except EndedEarly as pruned:
                _remove_checkpoints(trial_config, started.run_id)
                raise optuna.TrialPruned(str(pruned)) from None
            finally:
                if started.run_id:
                    trial.set_user_attr("mlflow_run_id", started.run_id)
        value = MlflowClient().get_run(run_id).data.metrics[OBJECTIVE]
        mlflow.log_metrics({f"trial_{OBJECTIVE}": value}, step=trial.number)
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
        name: value
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


# --- the outcome --------------------------------------------------------------------------------


def log_study(study: optuna.Study) -> pd.DataFrame:
    """The table of all trials, best params and value, and Optuna's plots on the parent run."""
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds()
    intervals = trial_intervals(study)
    if intervals:
        table["value_ci_low"] = table["number"].map({n: i.low for n, i in intervals.items()})
        table["value_ci_high"] = table["number"].map({n: i.high for n, i in intervals.items()})
    mlflow.log_text(table.to_markdown(index=False, floatfmt=".4f"), "sweep/trials.md")
    mlflow.log_text(table.to_csv(index=False), "sweep/trials.csv")
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    states = {state.name.lower(): sum(t.state == state for t in study.trials) for state in TrialState}
    mlflow.log_metrics({f"trials_{name}": count for name, count in states.items() if count})
    if not complete:
        return table
    best = study.best_trial
    mlflow.log_metrics({"best_value": best.value, "best_trial_number": best.number})
    if best.number in intervals:
        within = within_noise_of_best(intervals, best.number)
        best_interval = intervals[best.number]
        mlflow.log_metrics(
            {
                "best_value_ci_low": best_interval.low,
                "best_value_ci_high": best_interval.high,
                "trials_within_noise": within,
            }
        )
        noise = (
            f"{within} of the other {len(intervals) - 1} complete trials are within noise of the best: their "
            f"{OBJECTIVE} 95% interval overlaps the best's {best_interval}"
        )
        _set_tags({"within_noise": noise})
        print(f"sweep: {noise}")
    mlflow.log_dict(best.params, "sweep/best_params.json")
    _set_tags(
        {
            "best_params": json.dumps(best.params),
            "best_trial_number": best.number,
            "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
        }
    )
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        log_figure(_fitted(optuna_plots.plot_optimization_history(study)), "plots/optimization_history.png")
        reason = _no_importances(study, complete)
        if reason:
            _set_tags({"param_importances": reason})
        else:
            log_figure(_fitted(optuna_plots.plot_param_importances(study)), "plots/param_importances.png")
    return table


def trial_intervals(study: optuna.Study) -> dict[int, significance.Interval]:
    """Each complete trial's objective with the 95% interval its run logged, by trial number."""
    intervals = {}
    for trial in study.trials:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.state != TrialState.COMPLETE or not run_id:
            continue
        logged = MlflowClient().get_run(run_id).data.metrics
        low, high = logged.get(f"{OBJECTIVE}_ci_low"), logged.get(f"{OBJECTIVE}_ci_high")
        if low is not None and high is not None:
            intervals[trial.number] = significance.Interval(float(trial.value), low, high)
    return intervals


def within_noise_of_best(intervals: dict[int, significance.Interval], best: int) -> int:
    """How many other trials' intervals overlap the best trial's: gaps that chance alone could make."""
    top = intervals[best]
    return sum(1 for number, i in intervals.items() if number != best and i.high >= top.low and i.low <= top.high)


def _fitted(axes: Any) -> Any:
    """The figure of Optuna's axes, laid out so that long parameter names are not cut off."""
    axes.figure.tight_layout()
    return axes.figure


def _no_importances(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> str | None:
    """Why parameter importances cannot be computed yet, or None when they can."""
    if len(complete) < 2:
        return f"not computed: {len(complete)} complete trial(s), importances need 2"
    varied = [name for name in complete[0].params if len({str(t.params.get(name)) for t in complete}) > 1]
    if not varied:
        return "not computed: every complete trial used the same parameters"
    return None


def _best_trial(study: optuna.Study, study_name: str) -> optuna.trial.FrozenTrial:
    if not any(trial.state == TrialState.COMPLETE for trial in study.trials):
        raise UserError(
            f"Study {study_name!r} has no complete trial (all were pruned or failed), so there is no best trial to "
            "score on the test split; run more trials (--n_trials) or raise --pruner_startup_trials."
        )
    return study.best_trial


def score_best(
    best: optuna.trial.FrozenTrial, splits: DatasetSplits, config: SweepConfig, registered_model: str, stage: str
) -> None:
    """Score the best trial's model on the test split once, as ``evaluate`` does; put its scores on the parent.

    The nested evaluate run holds what any evaluation logs (scores with intervals, error
    analysis, calibration); the parent gets its test scores as ``best_test_*``. Then the model
    is registered.
    """
    run_id = best.user_attrs["mlflow_run_id"]
    model_uri = registry.model_of_run(run_id)
    if model_uri is None:
        raise UserError(
            f"The best trial ({best.number}, run {run_id}) has no logged model in the tracking store "
            f"{mlflow.get_tracking_uri()}; was the run deleted? Start a new study (--study_name)."
        )
    evaluation = EvaluateConfig(model_uri=model_uri, dataset=config.dataset, split="test")
    evaluated = evaluate.run(evaluation, labelled=LabelledData.from_splits(splits, "test"))
    scores = MlflowClient().get_run(evaluated).data.metrics
    mlflow.log_metrics({f"best_{name}": value for name, value in scores.items() if name.startswith("test_")})
    _set_tags({"best_trial_evaluation": evaluated})
    print(
        f"sweep: best trial {best.number} (run {run_id}): {OBJECTIVE} {best.value:.4f}, "
        f"test accuracy {console.shown_score(scores, 'test_accuracy')}; params {json.dumps(best.params)}"
    )
    registered_model = registered_model and registry.registered_name(registered_model, splits.name, splits.label_names)
    if registered_model:
        version = registry.register(model_uri, registered_model, splits.label_names)
        registry.describe_version(
            registered_model,
            version,
            f"Best trial {best.number} of an Optuna sweep over the {stage} stage (run `{run_id}`).",
            {"stage": stage, "dataset_digest": splits.digest, "sweep_trial": str(best.number)},
            overwrite=False,
        )
        _set_tags({"registered_model": registered_model, "registered_version": version})
