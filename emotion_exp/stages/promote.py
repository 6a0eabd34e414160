"""The promote stage: register the best run of this dataset and move @champion if it is shown to be better.

The rule, in order:

1. The candidate is the best FINISHED run of the current experiment that logged a model and
   carries this dataset's ``dataset_digest``: highest metric, then highest ``val_accuracy``,
   then the most recent. Its model is registered once (an existing version is reused).
2. Without a champion, the candidate becomes champion.
3. A champion from another dataset digest (or whose run or metric is gone) is never compared:
   scores on different data say nothing about each other, so the alias stays. To hand it over,
   delete the alias (``MlflowClient().delete_registered_model_alias(name, "champion")``) and
   promote again.
4. Otherwise, under ``--rule significant`` (the default), the alias moves only when the candidate
   is better on the same validation texts by an exact McNemar test at ``--alpha`` (from both
   runs' per-text predictions, or from the models' own predictions where a run lacks them) and by
   at least ``--min_delta`` of the metric: a gap that chance alone could make is not a reason to
   ship a new model. ``--rule better`` moves it on any margin. Never a demotion.

Running it again changes nothing: the same candidate maps to the same version and the same
decision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from emotion_exp import console, contract, data, registry, significance, tracking
from emotion_exp.config import CHAMPION_ALIAS, DataConfig, PromoteConfig, subset
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.registry import Candidate, Champion
from emotion_exp.stages.skeleton import log_train_overlap, warn_train_overlap


@dataclass(frozen=True)
class Decision:
    """What promote decided and why."""

    promoted: bool
    reason: str


@dataclass(frozen=True)
class Evidence:
    """The candidate against the champion on the same validation texts (``--rule significant``)."""

    candidate: significance.Interval
    champion: significance.Interval
    difference: significance.Interval
    """Candidate minus champion on the promotion metric, with its paired bootstrap interval."""
    test: significance.McNemar
    texts: int

    def metrics(self) -> dict[str, float]:
        """The test's figures, as the promote run logs them (and its version carries them as tags)."""
        return {
            "promotion_delta": self.difference.estimate,
            "promotion_delta_ci_low": self.difference.low,
            "promotion_delta_ci_high": self.difference.high,
            "promotion_pvalue": self.test.pvalue,
        }


def best(candidates: list[Candidate]) -> Candidate:
    """Highest metric; ties by ``val_accuracy``, then the most recent run."""
    return max(candidates, key=lambda c: (c.value, c.val_accuracy, c.start_time))


def decide(
    candidate: Candidate,
    candidate_version: str,
    champion: Champion | None,
    *,
    metric: str,
    digest: str,
    rule: str = "better",
    alpha: float = 0.05,
    min_delta: float = 0.0,
    evidence: Evidence | None = None,
) -> Decision:
    """Apply the promotion rule (module docstring) to a candidate and the current champion.

    ``rule="significant"`` needs ``evidence`` wherever the two are compared.
    """
    score = f"{metric} {evidence.candidate if evidence else candidate.shown or f'{candidate.value:.4f}'}"
    if champion is None:
        return Decision(True, f"no @{CHAMPION_ALIAS} yet; version {candidate_version} ({score}) becomes champion")
    if champion.version == candidate_version or champion.run_id == candidate.run_id:
        return Decision(False, f"version {champion.version} is already the champion and still the best run ({score})")
    if champion.digest != digest:
        return Decision(
            False,
            f"the champion, version {champion.version}, was evaluated on dataset digest "
            f"{(champion.digest or 'unknown')[:12]}, not {digest[:12]}; scores on different data are not "
            "compared, so the alias stays (delete the alias and promote again to hand it over)",
        )
    if champion.value is None:
        return Decision(
            False,
            f"the champion, version {champion.version}, has no {metric} to compare with, so the alias stays",
        )
    if rule == "significant":
        if evidence is None:
            raise ValueError("--rule significant compares the two models' predictions: pass their evidence")
        return _significant(candidate_version, champion.version, metric, evidence, alpha, min_delta)
    if candidate.value > champion.value:
        return Decision(
            True,
            f"{score} of version {candidate_version} beats {champion.value:.4f} of version {champion.version}",
        )
    return Decision(
        False,
        f"{score} of version {candidate_version} is not strictly better than "
        f"{champion.value:.4f} of the champion, version {champion.version}",
    )


def _significant(
    candidate_version: str, champion_version: str, metric: str, evidence: Evidence, alpha: float, min_delta: float
) -> Decision:
    """``--rule significant``: better on the same texts beyond chance (McNemar at ``alpha``) and by ``min_delta``."""
    d, test = evidence.difference, evidence.test
    facts = (
        f"{metric} {evidence.candidate} of version {candidate_version} against {evidence.champion} of the champion, "
        f"version {champion_version}, on the same {evidence.texts:,} validation texts: difference "
        f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] (paired 95% CI), McNemar p={test.pvalue:.2g} "
        f"({test.only_a} texts only the candidate gets right, {test.only_b} only the champion)"
    )
    if d.estimate <= 0 or test.only_a <= test.only_b:
        return Decision(False, f"{facts}: the candidate is not better, so the alias stays")
    if test.pvalue >= alpha:
        return Decision(
            False,
            f"{facts}: p >= {alpha:g}, a gap chance alone makes, so the alias stays (--rule better promotes on any "
            "margin)",
        )
    if d.estimate < min_delta:
        return Decision(False, f"{facts}: the gain is below --min_delta {min_delta:g}, so the alias stays")
    return Decision(True, f"{facts}: p < {alpha:g}, better beyond chance")


def run(config: PromoteConfig, *, splits: DatasetSplits | None = None) -> str:
    """Register the best run for this dataset and move @champion by ``config.rule``; return the run id."""
    if not config.registered_model:
        raise UserError(
            "--registered_model is empty; promote needs the registered model whose @champion alias it "
            "moves ('auto' names it after the data)."
        )
    experiment_id = tracking.current_experiment_id()
    with tracking.stage_run("promote", config) as promote_run:
        if splits is None:
            splits = data.load_splits(subset(config, DataConfig))
            warn_train_overlap("promote", splits)
        mlflow.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
        log_train_overlap(splits)
        name = registry.registered_name(config.registered_model, splits.name, splits.label_names)
        config = dataclasses.replace(config, registered_model=name)
        mlflow.set_tag("registered_model", name)
        tracking.require_edit("promote", registered_model=name)  # it moves @champion
        found = registry.candidates(experiment_id, splits.digest, config.metric)
        if not found:
            raise _no_candidates(experiment_id, splits.digest, splits.name, config.metric)
        candidate = best(found)
        version = registry.register(candidate.model_uri, name, splits.label_names)
        champion = registry.champion(name, config.metric)
        evidence = None
        if config.rule == "significant" and comparable(champion, candidate, version, splits.digest):
            evidence = compare_on_validation(candidate, champion, name, splits, config.metric)
        decision = decide(
            candidate,
            version,
            champion,
            metric=config.metric,
            digest=splits.digest,
            rule=config.rule,
            alpha=config.alpha,
            min_delta=config.min_delta,
            evidence=evidence,
        )
        if decision.promoted:
            registry.set_champion(name, version)
        _record(config, promote_run.info.run_id, candidate, version, champion, decision, splits.digest, evidence)
        return promote_run.info.run_id


def comparable(champion: Champion | None, candidate: Candidate, version: str, digest: str) -> bool:
    """Whether a champion exists to be compared with, text by text (rules 2 and 3 decide otherwise)."""
    return (
        champion is not None
        and champion.version != version
        and champion.run_id not in (None, candidate.run_id)
        and champion.digest == digest
        and champion.value is not None
    )


def compare_on_validation(
    candidate: Candidate, champion: Champion, name: str, splits: DatasetSplits, metric: str
) -> Evidence:
    """Both models' validation predictions side by side: scores, paired difference and McNemar's test.

    Each comes from its run's per-text predictions, or, for a run logged before they were
    recorded, from the model itself on this validation split.
    """
    gold = splits.validation["label"].to_numpy()
    predicted = {}
    for key, run_id, model_uri in (
        ("candidate", candidate.run_id, candidate.model_uri),
        ("champion", champion.run_id, f"models:/{name}/{champion.version}"),
    ):
        table = tracking.run_predictions(run_id)
        if table is None or not (table["split"] == "validation").any():
            console.say(f"promote: run {run_id} has no per-text predictions; predicting validation with {model_uri}")
            table = _predicted_by(model_uri, splits)
        logged_gold, predicted[key] = significance.label_ids(table, "validation")
        if len(logged_gold) != len(gold) or not (logged_gold == gold).all():
            raise UserError(
                f"Run {run_id} carries the dataset digest {splits.digest[:12]} but other validation labels than this "
                "data's: its predictions cannot be paired with the candidate's."
            )
    score = metric.removeprefix("val_")
    n_labels = len(splits.label_names)
    return Evidence(
        candidate=significance.score_interval(gold, predicted["candidate"], n_labels, score),
        champion=significance.score_interval(gold, predicted["champion"], n_labels, score),
        difference=significance.paired_difference(gold, predicted["candidate"], predicted["champion"], n_labels, score),
        test=significance.mcnemar(gold, predicted["candidate"], predicted["champion"]),
        texts=len(gold),
    )


def _predicted_by(model_uri: str, splits: DatasetSplits) -> pd.DataFrame:
    """A ``predictions_table`` of the validation split from the model itself."""
    output = registry.load_model(model_uri).model.predict(splits.validation[["text"]])
    probabilities = output[[contract.probability_column(label) for label in splits.label_names]].to_numpy()
    gold = splits.validation["label"].to_numpy()
    return significance.predictions_table("validation", gold, probabilities, splits.label_names)


def _no_candidates(experiment_id: str, digest: str, dataset_name: str, metric: str) -> UserError:
    others = registry.digests_with_models(experiment_id)
    found = (
        "it holds finished runs with a model for other data only ("
        + ", ".join(f"{n} for digest {d[:12]}" for d, n in sorted(others.items()))
        + ")"
        if others
        else "it holds no finished run with a logged model"
    )
    return UserError(
        f"Nothing to promote in experiment {MlflowClient().get_experiment(experiment_id).name!r}: expected a finished "
        f"run that logged a model with {metric} on dataset {dataset_name!r} (digest {digest[:12]}), but {found}. "
        "Run `emotion-exp finetune` (or probe / tfidf) on this dataset in this experiment first, or pick "
        "the experiment with MLFLOW_EXPERIMENT_NAME."
    )


def _record(
    config: PromoteConfig,
    run_id: str,
    candidate: Candidate,
    version: str,
    champion: Champion | None,
    decision: Decision,
    digest: str,
    evidence: Evidence | None,
) -> None:
    """The decision as params and tags of the promote run and a markdown note on the version."""
    tracking.log_params(
        {
            "candidate_run_id": candidate.run_id,
            "candidate_stage": candidate.stage,
            "candidate_version": version,
            "candidate_value": candidate.value,
            "champion_version": champion.version if champion else "none",
            "champion_run_id": (champion.run_id if champion else None) or "none",
            "champion_value": "none" if champion is None or champion.value is None else champion.value,
            "promoted": decision.promoted,
        }
    )
    if evidence is not None:
        mlflow.log_metrics(evidence.metrics())
    mlflow.set_tags(
        {
            "promote_decision": "promoted" if decision.promoted else "kept",
            "promote_reason": decision.reason,
            "promote_candidate_stage": candidate.stage,
        }
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    previous = "none"
    if champion:
        previous = f"version {champion.version} ({'n/a' if champion.value is None else f'{champion.value:.4f}'})"
    note = (
        f"{registry.PROMOTION_HEADING}\n\n"
        f"**{'Champion' if decision.promoted else 'Not promoted'}** ({when}, promote run `{run_id}`)\n\n"
        f"- {config.metric}: {candidate.value:.4f} (stage `{candidate.stage}`, run `{candidate.run_id}`)\n"
        f"- previous champion: {previous}\n"
        f"- dataset digest: `{digest[:12]}`\n"
        f"- reason: {decision.reason}\n"
    )
    registry.note_promotion(
        config.registered_model,
        version,
        note,
        {
            "dataset_digest": digest,
            "stage": candidate.stage,
            config.metric: f"{candidate.value:.6f}",
            registry.PROMOTION_RUN_TAG: run_id,
            "promotion_rule": config.rule,
            **({key: f"{value:.6g}" for key, value in evidence.metrics().items()} if evidence else {}),
        },
        replace=decision.promoted,
    )
