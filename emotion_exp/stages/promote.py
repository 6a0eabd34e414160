"""The promote stage: register the best run of this dataset and move @champion if strictly better.

The rule, in order:

1. The candidate is the best FINISHED run of the current experiment that logged a model and
   carries this dataset's ``dataset_digest``: highest metric, then highest ``val_accuracy``,
   then the most recent. Its model is registered once (an existing version is reused).
2. Without a champion, the candidate becomes champion.
3. A champion from another dataset digest (or whose run or metric is gone) is never compared:
   scores on different data say nothing about each other, so the alias stays. To hand it over,
   delete the alias (``MlflowClient().delete_registered_model_alias(name, "champion")``) and
   promote again.
4. Otherwise the alias moves only when the candidate is strictly better; never a demotion.

Running it again changes nothing: the same candidate maps to the same version and the same
decision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow.tracking import MlflowClient

from emotion_exp import data, registry, tracking
from emotion_exp.config import CHAMPION_ALIAS, DataConfig, PromoteConfig, subset
from emotion_exp.data import DatasetSplits
from emotion_exp.errors import UserError
from emotion_exp.registry import Candidate, Champion


@dataclass(frozen=True)
class Decision:
    """What promote decided and why."""

    promoted: bool
    reason: str


def best(candidates: list[Candidate]) -> Candidate:
    """Highest metric; ties by ``val_accuracy``, then the most recent run."""
    return max(candidates, key=lambda c: (c.value, c.val_accuracy, c.start_time))


def decide(
    candidate: Candidate, candidate_version: str, champion: Champion | None, *, metric: str, digest: str
) -> Decision:
    """Apply the promotion rule (module docstring) to a candidate and the current champion."""
    score = f"{metric} {candidate.value:.4f}"
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


def run(config: PromoteConfig, *, splits: DatasetSplits | None = None) -> str:
    """Register the best run for this dataset and move @champion if it is strictly better; return the run id."""
    if not config.registered_model:
        raise UserError(
            "--registered_model is empty; promote needs the registered model whose @champion alias it "
            "moves ('auto' names it after the data)."
        )
    experiment_id = tracking.current_experiment_id()
    with tracking.stage_run("promote", config) as promote_run:
        if splits is None:
            splits = data.load_splits(subset(config, DataConfig))
        mlflow.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
        name = registry.registered_name(config.registered_model, splits.name, splits.label_names)
        config = dataclasses.replace(config, registered_model=name)
        mlflow.set_tag("registered_model", name)
        found = registry.candidates(experiment_id, splits.digest, config.metric)
        if not found:
            raise _no_candidates(experiment_id, splits.digest, splits.name, config.metric)
        candidate = best(found)
        version = registry.register(candidate.model_uri, name, splits.label_names)
        champion = registry.champion(name, config.metric)
        decision = decide(candidate, version, champion, metric=config.metric, digest=splits.digest)
        if decision.promoted:
            registry.set_champion(name, version)
        _record(config, promote_run.info.run_id, candidate, version, champion, decision, splits.digest)
        return promote_run.info.run_id


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
        },
        replace=decision.promoted,
    )
