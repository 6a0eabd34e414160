"""A sweep's outcome on its parent run: the trials' table with intervals, how many are within noise of the best,
Optuna's plots, and the best trial scored on test once by a nested evaluate run."""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import mlflow
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from emotion_exp import console, registry, significance
from emotion_exp.catalog import SweepConfig
from emotion_exp.config import EvaluateConfig
from emotion_exp.data import LabelledData
from emotion_exp.errors import UserError
from emotion_exp.stages import evaluate
from emotion_exp.stages.skeleton import log_figure

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits


OBJECTIVE = "val_f1_weighted"
"""Trials are compared by the project's promotion metric."""


def set_tags(tags: dict[str, Any]) -> None:
    """Set tags, each value as text."""
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


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
        set_tags({"within_noise": noise})
        print(f"sweep: {noise}")
    mlflow.log_dict(best.params, "sweep/best_params.json")
    set_tags(
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
            set_tags({"param_importances": reason})
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


def best_trial(study: optuna.Study, study_name: str) -> optuna.trial.FrozenTrial:
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
    set_tags({"best_trial_evaluation": evaluated})
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
        set_tags({"registered_model": registered_model, "registered_version": version})
