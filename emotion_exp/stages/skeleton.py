"""The skeleton every model stage shares: open the run and log the data once; score, log, register.

A model stage is three steps, and only the middle one is its own (its ``run`` follows
``catalog.StageRun``; a feature head writes none of this, ``feature_head`` does)::

    def run(config: XConfig, *, splits=None, train_rows=None, score_test=True, labels=None) -> str:
        with skeleton.open_stage("x", config, splits=splits, train_rows=train_rows, labels=labels) as stage:
            model = fit(stage.splits.train, config)                 # what is particular to the stage
            stage.finish(lambda split: probabilities(model, split), # scored on validation and test
                         LoggedModel(pyfunc_model, packages=(...)),
                         registered_model=config.registered_model, score_test=score_test)
            return stage.run_id

``open_stage`` opens the stage's run (``tracking.stage_run``: attached to ``mlflow run``'s run,
nested under a parent, or its own), loads the splits unless a parent passes them, records the
dataset inputs and ``dataset_digest`` tag on the run, and draws the label distribution on the
run that loaded the data (so ``main`` draws it once, on the parent).

``finish`` scores each evaluated split from the model's class probabilities (``score_test=False``
scores validation only: a sweep trial must never see test), logs metrics, confusion matrix and
classification report per split, then logs the pyfunc model, registers it when asked, and
writes the version's description (a model card) and tags. A stage that needs the scores before
it logs its model (finetune writes them into its card) calls ``score`` and ``log_model`` itself.

Everything logged about one split goes through ``log_predictions`` (``log_split`` for a
training stage's splits, ``evaluate`` for its data): scores, error analysis and calibration
are added there once and every model stage gets them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import mlflow
import mlflow.data
import numpy as np
import pandas as pd

from emotion_exp import (
    analysis,
    console,
    data,
    metrics,
    model_card,
    plots,
    pyfunc,
    registry,
    significance,
    subsets,
    tracking,
)
from emotion_exp.config import FOLLOW_THE_DATA, DataConfig, subset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emotion_exp.data import DatasetSplits, LabelledData
    from emotion_exp.metrics import Evaluation
    from emotion_exp.models import ResolvedModel

SPLITS = data.SPLITS
SPLIT_PREFIX = {"train": "train", "validation": "val", "test": "test"}
"""Metric-name prefix of each split (``val_accuracy``)."""
LINKED_SCORES = ("val_accuracy", "val_accuracy_ci_low", "val_accuracy_ci_high", "val_f1_weighted")
"""The scores a logged model shows first in MLflow's Models tab, linked to the validation dataset."""


def log_figure(figure: Figure, artifact_file: str) -> None:
    """Log a figure as a PNG artifact and free it."""
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_table(table: pd.DataFrame, artifact_file: str) -> None:
    """Log a table as a Parquet artifact at ``artifact_file``."""
    path = Path(artifact_file)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / path.name
        table.to_parquet(local, index=False)
        mlflow.log_artifact(str(local), str(path.parent))


def log_dataset(splits: DatasetSplits) -> None:
    """Record the data: one MLflow dataset input per split, and the ``dataset_digest`` tag.

    MLflow's own dataset digest hashes only the first rows, so the tag carries our digest over
    every text, label and label name; runs are reused and compared by it.
    """
    for split in SPLITS:
        dataset = split_dataset(splits, split)
        tracking.retry_on_conflict(lambda dataset=dataset, split=split: mlflow.log_input(dataset, context=split))
    mlflow.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
    tracking.log_params({"dataset_source": splits.source, "label_names": ",".join(splits.label_names)})
    mlflow.log_metrics({f"{SPLIT_PREFIX[s]}_rows": len(splits.split(s)) for s in SPLITS})
    log_train_overlap(splits)


def log_train_overlap(splits: DatasetSplits) -> None:
    """Record how many validation and test texts are training texts too: ``train_overlap_val``, ``_test`` and a tag.

    Not named ``val_...``: those are scores (a sweep trial logs none of test's), and seeds average them.
    """
    overlap = splits.train_overlap
    mlflow.log_metrics({f"train_overlap_{SPLIT_PREFIX[split]}": count for split, count in overlap.in_train.items()})
    mlflow.set_tag("train_overlap", overlap.describe())


def warn_train_overlap(stage: str, splits: DatasetSplits) -> None:
    """One console line where validation or test texts are training texts beyond ``data.OVERLAP_WARNING_SHARE``.

    Said by the stage that loaded the data, once: the nested runs of a study or sweep get its splits.
    """
    warning = splits.train_overlap.warning()
    if warning:
        console.say(f"{stage}: warning: {warning}")


def split_dataset(splits: DatasetSplits, split: str) -> mlflow.data.dataset.Dataset:
    """One split as the MLflow dataset a run records as its input (``<data name>-<split>``)."""
    # Labels as their names, as the user knows them (integer ids would also make MLflow hint, when it
    # infers the schema, that integers cannot hold missing values).
    names = splits.split(split)["label"].map(dict(enumerate(splits.label_names)))
    frame = splits.split(split)[["text"]].assign(label=names)
    with warnings.catch_warnings():
        # MLflow warns that a local path matches two source types; a local file is a local file.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(
            frame, source=splits.source, targets="label", name=f"{splits.name}-{split}", digest=splits.digest[:16]
        )


def log_labelled_input(labelled: LabelledData) -> None:
    """Record evaluation data: one dataset input (context = its split) and the ``dataset_digest`` tag."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # as in log_dataset
        dataset = mlflow.data.from_pandas(
            labelled.frame,
            source=labelled.source,
            targets="label",
            name=labelled.dataset_name,
            digest=labelled.digest[:16],
        )
    tracking.retry_on_conflict(lambda: mlflow.log_input(dataset, context=labelled.split))
    mlflow.set_tags({"dataset_digest": labelled.digest, "dataset_name": labelled.name})
    tracking.log_params({"dataset_source": labelled.source})
    mlflow.log_metric(f"{SPLIT_PREFIX[labelled.split]}_rows", len(labelled.frame))


def log_model_source(resolved: ResolvedModel, precision: str | None = None) -> None:
    """Record which weights a run really used, the precision they ran in, and the CPU."""
    from emotion_exp.models import cpu_description

    params = {"model_location": resolved.location, "model_source": resolved.source}
    if precision is not None:
        params["resolved_precision"] = precision
    tracking.log_params(params)
    mlflow.set_tag("cpu", cpu_description())


@dataclass(frozen=True)
class LoggedModel:
    """A pyfunc model as ``pyfunc.log_model`` takes it: the model, its artifact folders and pip packages."""

    python_model: mlflow.pyfunc.PythonModel
    artifacts: dict[str, str] = field(default_factory=dict)
    packages: Sequence[str] = ()


@dataclass(frozen=True)
class Stage:
    """An open model-stage run and the data it works on."""

    name: str
    run_id: str
    splits: DatasetSplits
    """What the stage trains on and scores: with ``train_rows``, those rows of the training split only."""
    loaded_data: bool
    """Whether this run loaded the splits itself (rather than getting them from a parent)."""
    full_splits: DatasetSplits
    """Every row of the data, whatever ``train_rows`` took (a feature head finds its features by their digest)."""

    def log_label_distribution(self) -> None:
        """Draw the train split's label distribution, on the run that loaded the data only."""
        if self.loaded_data:
            labels = self.splits.train["label"]
            log_figure(plots.label_distribution(labels, self.splits.label_names), "plots/label_distribution.png")

    def score(self, probabilities: Callable[[str], np.ndarray], *, score_test: bool = True) -> dict[str, Evaluation]:
        """Score and log validation (and test) from ``probabilities(split)``, one row per text.

        Every scored split's per-text predictions go into one artifact
        (``significance.PREDICTIONS_ARTIFACT``), so that any two runs on the same data can be
        compared text by text later (``compare``, ``promote``).
        """
        evaluated = ("validation", "test") if score_test else ("validation",)
        evaluations, tables = {}, []
        for split in evaluated:
            split_probabilities = probabilities(split)
            evaluations[split] = log_split(split, self.splits, split_probabilities)
            gold = self.splits.split(split)["label"].to_numpy()
            tables.append(significance.predictions_table(split, gold, split_probabilities, self.splits.label_names))
        log_table(pd.concat(tables, ignore_index=True), significance.PREDICTIONS_ARTIFACT)
        self.caution(evaluations["validation"])
        return evaluations

    def caution(self, validation: Evaluation) -> None:
        """One line where the validation split is too small to separate stages (a run on its own; a study says it
        once, in its summary)."""
        shown = f"val accuracy {validation.shown('accuracy')}"
        line = significance.too_few_texts(len(self.splits.validation), shown)
        if line and mlflow.get_parent_run(self.run_id) is None:
            console.say(f"{self.name}: {line}")

    def registered_name(self, requested: str) -> str:
        """The registered model a ``--registered_model`` value means for this data ('' = do not register)."""
        return requested and registry.registered_name(requested, self.splits.name, self.splits.label_names)

    def log_model(
        self,
        model: LoggedModel,
        *,
        registered_model: str = "",
        description: str,
    ) -> str:
        """Log the pyfunc model; register it under ``registered_model`` (when set) with its description and tags.

        ``registered_model`` is the name ``registered_name`` resolved, once, for this stage ('' = do
        not register). Returns the model URI.
        """
        model_uri = pyfunc.log_model(
            model.python_model,
            self.splits.label_names,
            name=self.name,
            artifacts=model.artifacts or None,
            packages=model.packages,
        )
        self.link_scores(model_uri)
        if registered_model:
            version = registry.register(model_uri, registered_model, self.splits.label_names)
            version_tags = {"stage": self.name, "dataset_digest": self.splits.digest}
            registry.describe_version(registered_model, version, description, version_tags, overwrite=True)
            mlflow.set_tags({"registered_model": registered_model, "registered_version": version})
        return model_uri

    def link_scores(self, model_uri: str) -> None:
        """Link the validation headline (``LINKED_SCORES``) to the logged model and the validation split.

        MLflow links every step-0 metric of the run to a model logged in it, without a dataset; the
        Models tab groups a model's metrics by dataset, those without one last. Linked again with the
        validation dataset, the headline comes first there (a second point of the same value in the
        run's history of those metrics).
        """
        scores = mlflow.get_run(self.run_id).data.metrics
        headline = {key: scores[key] for key in LINKED_SCORES if key in scores}
        if headline:
            model_id = model_uri.removeprefix("models:/")
            mlflow.log_metrics(headline, model_id=model_id, dataset=split_dataset(self.splits, "validation"))

    def note_unregistered(self) -> None:
        """Say in the closing line that the model was not registered, and how it would be (a run on its own only).

        In a workflow's nested run the workflow registers (the study's promote, the sweep's best
        trial), so nothing is said there.
        """
        if mlflow.get_parent_run(self.run_id) is not None:
            return
        auto = registry.registered_name(FOLLOW_THE_DATA, self.splits.name, self.splits.label_names)
        how = "-P registered_model=auto" if tracking.launcher_run_id() else "--registered_model auto"
        mlflow.set_tag(console.NOT_REGISTERED_TAG, f"{how} registers it as {auto!r}")

    def finish(
        self,
        probabilities: Callable[[str], np.ndarray],
        model: LoggedModel | None = None,
        *,
        registered_model: str = "",
        score_test: bool = True,
    ) -> dict[str, Evaluation]:
        """Score the evaluated splits, then log (and register) ``model`` with a card of those scores."""
        evaluations = self.score(probabilities, score_test=score_test)
        if model is not None:
            registered_model = self.registered_name(registered_model)
            card = model_card.summary(self.name, self.splits, evaluations, registered_model)
            self.log_model(model, registered_model=registered_model, description=card)
            if not registered_model:
                self.note_unregistered()
        return evaluations


def log_split(split: str, splits: DatasetSplits, probabilities: np.ndarray) -> Evaluation:
    """Everything logged about one evaluated split of a training stage (``log_predictions``)."""
    frame = splits.split(split)
    return log_predictions(split, frame["text"].tolist(), frame["label"].to_numpy(), probabilities, splits.label_names)


def log_predictions(
    split: str,
    texts: Sequence[str],
    gold: np.ndarray,
    probabilities: np.ndarray,
    label_names: Sequence[str],
    *,
    error_analysis: bool | None = None,
    log_scores: Callable[[dict[str, float]], None] = mlflow.log_metrics,
) -> Evaluation:
    """Log everything a split's predicted probabilities tell (the one place for it); return its scores.

    Always: accuracy and F1 with their 95% bootstrap intervals (``<prefix>_<metric>_ci_low`` and
    ``_ci_high``; the method in the ``ci_*`` params), the row-normalised confusion matrix, the
    classification report, and ``<prefix>_loss``, ``_ece``, ``_brier``. With ``error_analysis`` (by default for the
    validation split only, so that no one tunes on test errors; ``evaluate`` asks for its data):
    ``analysis/<split>_predictions.parquet`` (every text), ``analysis/hardest_<split>.md``,
    ``analysis/confusions.md`` and ``plots/reliability_<split>.png``. One split per run gets it.
    The scores go to ``log_scores`` in one call (``evaluate`` hands them to ``mlflow.models.evaluate``).
    """
    prefix = SPLIT_PREFIX[split]
    predicted = probabilities.argmax(axis=1)
    intervals = significance.score_intervals(gold, predicted, len(label_names))
    evaluation = dataclasses.replace(metrics.evaluate(gold, predicted, label_names), intervals=intervals)
    calibration = analysis.calibration_metrics(gold, probabilities, prefix)
    log_scores({**evaluation.metrics(prefix), **significance.interval_metrics(prefix, intervals), **calibration})
    tracking.log_params(significance.method_params())
    log_figure(
        plots.confusion_matrix(evaluation.confusion, label_names, title=f"Normalized Confusion Matrix ({split})"),
        f"plots/confusion_matrix_{split}.png",
    )
    mlflow.log_dict(evaluation.report, f"reports/classification_report_{split}.json")
    if error_analysis is None:
        error_analysis = split == "validation"
    if not error_analysis:
        return evaluation
    table = analysis.per_text(texts, gold, probabilities, label_names)
    log_table(table, f"analysis/{split}_predictions.parquet")
    mlflow.log_text(analysis.hardest_markdown(table, split=split), f"analysis/hardest_{split}.md")
    mlflow.log_text(analysis.confusions_markdown(table, split=split), "analysis/confusions.md")
    log_figure(
        plots.reliability(
            analysis.reliability(gold, probabilities),
            calibration[f"{prefix}_ece"],
            title=f"Reliability diagram ({split})",
        ),
        f"plots/reliability_{split}.png",
    )
    return evaluation


@contextlib.contextmanager
def open_stage(
    name: str,
    config: Any,
    *,
    splits: DatasetSplits | None = None,
    train_rows: Sequence[int] | None = None,
    run_id: str | None = None,
    label_plot: bool = True,
    labels: tracking.RunLabels | None = None,
) -> Iterator[Stage]:
    """Open the stage's run with its data logged (module docstring); yield the open stage.

    ``splits`` come from a parent that loaded (and drew) them already; ``train_rows`` keeps only
    those rows of the training split for the stage to train on (a learning-curve point: the run
    logs that data); ``run_id`` re-opens an interrupted run, which has its dataset inputs from its
    first attempt. ``label_plot=False`` leaves drawing to the stage (extract draws nothing when it
    reuses features). ``labels``: a workflow's params and tags for the run (``tracking.RunLabels``).
    """
    with tracking.stage_run(name, config, run_id=run_id, labels=labels) as run:
        loaded_data = splits is None
        if splits is None:
            splits = data.load_splits(subset(config, DataConfig))
        if loaded_data:
            warn_train_overlap(name, splits)
        trained_on = splits if train_rows is None else subsets.with_train_rows(splits, train_rows)
        stage = Stage(name, run.info.run_id, trained_on, loaded_data, splits)
        if run_id is None:
            log_dataset(stage.splits)
        if label_plot:
            stage.log_label_distribution()
        yield stage
