"""The compare stage: two runs on the same data, text by text.

Both runs' per-text predictions (``significance.PREDICTIONS_ARTIFACT``, logged by every model
stage) are set side by side on each split they both scored: each run's accuracy with its 95%
interval, the paired differences of accuracy and weighted F1 with their bootstrap intervals,
and the exact McNemar p-value on the texts where exactly one of the two is right. Runs on
different data (another ``dataset_digest``) are refused: their texts cannot be paired.
"""

from __future__ import annotations

import re

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emotion_exp import console, registry, significance, tracking
from emotion_exp.config import CompareConfig
from emotion_exp.errors import UserError
from emotion_exp.stages.skeleton import SPLIT_PREFIX

ALPHA = 0.05
"""The level at which the closing verdict calls a difference more than noise."""


def run(config: CompareConfig) -> str:
    """Compare the two runs ``config`` names on validation and test; log and print the result; return the run id."""
    run_a, run_b = resolve_pair(config)
    if run_a == run_b:
        raise UserError(
            f"{config.run_a!r} and {config.run_b!r} are the same run, {run_a}: a run compared with itself differs "
            "on no text. Pass two different runs (run ids, models:/ or runs:/ URIs, or with --parent two stage "
            "names of the study)."
        )
    first, second = (_finished_run(run_id) for run_id in (run_a, run_b))
    digests = [r.data.tags.get("dataset_digest") for r in (first, second)]
    if None in digests or digests[0] != digests[1]:
        raise UserError(
            f"Runs {run_a} and {run_b} were scored on different data (dataset digests "
            f"{(digests[0] or 'none')[:12]} and {(digests[1] or 'none')[:12]}): only runs on the same texts can be "
            "compared text by text. Compare runs of the same dataset, split and sampling."
        )
    tables = {run_id: _predictions(run_id) for run_id in (run_a, run_b)}
    names = {run_a: _name(first), run_b: _name(second)}
    with tracking.stage_run("compare", config) as compare_run:
        mlflow.set_tags(
            {"compared_run_a": run_a, "compared_run_b": run_b, "dataset_digest": digests[0], "ci_level": "0.95"}
        )
        rows = []
        for split in ("validation", "test"):
            if not all((table["split"] == split).any() for table in tables.values()):
                continue
            try:
                paired = significance.compare_predictions(tables[run_a], tables[run_b], split)
            except ValueError as mismatch:  # the same digest, yet other texts or labels: a store edited by hand
                raise UserError(f"Runs {run_a} and {run_b} cannot be compared text by text: {mismatch}.") from None
            rows.append(_row(split, tables[run_a], tables[run_b], paired))
        if not rows:
            raise UserError(f"Runs {run_a} and {run_b} scored no split in common (validation or test).")
        table = pd.DataFrame(rows)
        mlflow.log_metrics(_metrics(table))
        report, conclusion = (
            report_markdown(table, names[run_a], names[run_b]),
            verdict(table, names[run_a], names[run_b]),
        )
        mlflow.log_text(f"{report}\n{conclusion}\n", "compare/comparison.md")
        mlflow.set_tag("compare_verdict", conclusion)  # the closing line's
        console.say(report)
        return compare_run.info.run_id


def resolve_pair(config: CompareConfig) -> tuple[str, str]:
    """The run ids of RUN_A and RUN_B: run ids, model URIs, or stage names of ``--parent``.

    With ``--parent``, no stage name compares the study's two best stages by validation accuracy,
    and one compares that stage with the best of the others.
    """
    if not config.parent:
        return _run_id(config.run_a), _run_id(config.run_b)
    children = [c for c in tracking.child_runs(_finished_run(config.parent).info.run_id) if "val_accuracy" in c]
    by_stage = {child["stage"]: child for child in children}  # the last run of each stage
    if not config.run_a and not config.run_b:
        if len(by_stage) < 2:
            raise UserError(f"Run {config.parent} has {len(by_stage)} scored stage(s); compare needs two.")
        ranked = sorted(by_stage.values(), key=lambda child: child["val_accuracy"], reverse=True)
        return ranked[0]["run_id"], ranked[1]["run_id"]
    named = [stage for stage in (config.run_a, config.run_b) if stage]
    missing = [stage for stage in named if stage not in by_stage]
    if missing:
        raise UserError(
            f"Run {config.parent} has no scored stage {', '.join(map(repr, missing))}; its stages: "
            f"{', '.join(sorted(by_stage)) or 'none'}."
        )
    if len(named) == 1:  # one stage against the best of the others, as the study's table sets them
        other = significance.best_other({s: child["val_accuracy"] for s, child in by_stage.items()}, named[0])
        if other is None:
            raise UserError(f"Run {config.parent} has no scored stage but {named[0]!r} to compare it with.")
        named.append(other)
    return by_stage[named[0]]["run_id"], by_stage[named[1]]["run_id"]


def _run_id(reference: str) -> str:
    if reference.startswith(("models:/", "runs:/")):
        return registry.run_of_model(reference)
    if not re.fullmatch(r"[0-9a-f]{32}", reference):
        raise UserError(
            f"{reference!r} is neither a run id (32 hexadecimal characters) nor a model URI (models:/<name>/<version>, "
            "models:/<name>@<alias>, runs:/<run id>/<stage>)."
        )
    return reference


def _finished_run(run_id: str) -> mlflow.entities.Run:
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UserError(f"No run {run_id} in the MLflow store {mlflow.get_tracking_uri()}.") from error
    if run.info.lifecycle_stage == "deleted":
        raise UserError(
            f"Run {run_id} is deleted (in the store's trash until `mlflow gc` removes it): restore it with "
            f"`mlflow runs restore --run-id {run_id}` to compare it, or pass another run."
        )
    if run.info.status != "FINISHED":
        raise UserError(f"Run {run_id} is {run.info.status}, not FINISHED: only finished runs are compared.")
    return run


def _predictions(run_id: str) -> pd.DataFrame:
    table = tracking.run_predictions(run_id)
    if table is None:
        raise UserError(
            f"Run {run_id} has no per-text predictions ({significance.PREDICTIONS_ARTIFACT}): it is not a model "
            "stage's run, or it was logged by an emotion-exp from before they were recorded. Run its stage again "
            "to compare it."
        )
    return table


def _name(run: mlflow.entities.Run) -> str:
    return f"{run.data.tags.get('stage', 'run')} ({run.info.run_id[:8]})"


def _row(
    split: str, table_a: pd.DataFrame, table_b: pd.DataFrame, paired: significance.PairedComparison
) -> dict[str, object]:
    n_labels = len(significance.label_names_of(table_a))
    scores, predicted = {}, {}
    for side, table in (("a", table_a), ("b", table_b)):
        gold, predicted[side] = significance.label_ids(table, split)
        scores[side] = significance.score_interval(gold, predicted[side], n_labels)
    return {
        "split": split,
        "texts": int((table_a["split"] == split).sum()),
        "accuracy_a": scores["a"],
        "accuracy_b": scores["b"],
        "delta": paired.difference,
        "f1_delta": significance.paired_difference(gold, predicted["a"], predicted["b"], n_labels, "f1_weighted"),
        "only_a": paired.test.only_a,
        "only_b": paired.test.only_b,
        "pvalue": paired.test.pvalue,
    }


def _metrics(table: pd.DataFrame) -> dict[str, float]:
    logged: dict[str, float] = {}
    for row in table.to_dict("records"):
        prefix = SPLIT_PREFIX[row["split"]]
        delta, f1_delta = row["delta"], row["f1_delta"]
        logged |= {
            f"{prefix}_accuracy_a": row["accuracy_a"].estimate,
            f"{prefix}_accuracy_b": row["accuracy_b"].estimate,
            f"{prefix}_accuracy_delta": delta.estimate,
            f"{prefix}_accuracy_delta_ci_low": delta.low,
            f"{prefix}_accuracy_delta_ci_high": delta.high,
            f"{prefix}_f1_weighted_delta": f1_delta.estimate,
            f"{prefix}_f1_weighted_delta_ci_low": f1_delta.low,
            f"{prefix}_f1_weighted_delta_ci_high": f1_delta.high,
            f"{prefix}_mcnemar_pvalue": row["pvalue"],
            f"{prefix}_only_a_right": row["only_a"],
            f"{prefix}_only_b_right": row["only_b"],
        }
    return logged


def report_markdown(table: pd.DataFrame, name_a: str, name_b: str) -> str:
    """The comparison as a table a person reads."""
    readable = pd.DataFrame(
        {
            "split": table["split"],
            "texts": table["texts"],
            f"A: {name_a}": table["accuracy_a"].map(str),
            f"B: {name_b}": table["accuracy_b"].map(str),
            "A - B accuracy (paired 95% CI)": table["delta"].map(_signed),
            "A - B weighted F1 (paired 95% CI)": table["f1_delta"].map(_signed),
            "McNemar p": table["pvalue"].map(lambda p: f"{p:.2g}"),
            "only A right / only B right": [
                f"{a} / {b}" for a, b in zip(table["only_a"], table["only_b"], strict=True)
            ],
        }
    )
    return (
        f"compare: accuracy of A = {name_a} and B = {name_b} on the same texts\n\n"
        + readable.to_markdown(index=False)
        + "\n"
    )


def _signed(difference: significance.Interval) -> str:
    return f"{difference.estimate:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]"


def verdict(table: pd.DataFrame, name_a: str, name_b: str) -> str:
    """One sentence on validation (selection happens there): a real difference, or one chance alone can make."""
    row = table.iloc[0].to_dict()
    delta, pvalue = row["delta"], row["pvalue"]
    better, worse = (name_a, name_b) if delta.estimate > 0 else (name_b, name_a)
    if pvalue < ALPHA and not delta.contains(0.0):
        return (
            f"On {row['split']}, {better} is more accurate than {worse} by {abs(delta.estimate):.3f} "
            f"(McNemar p={pvalue:.2g} < {ALPHA}; the paired interval excludes 0)."
        )
    return (
        f"On {row['split']}, the difference ({delta.estimate:+.3f}, McNemar p={pvalue:.2g}) is within what chance "
        f"alone makes on {row['texts']:,} texts: neither run is shown to be better."
    )
