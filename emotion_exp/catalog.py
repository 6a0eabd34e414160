"""The stage registry: every stage declared once, and everything that lists stages reads it here.

The command line (``cli.py``), the ``MLproject`` entry points (``mlproject.py``), the configs'
lists of sweepable and learning-curve stages (``config.py``), the sweep and the learning curve,
and the closing line each stage ends with all iterate over ``STAGES``; ``tests/test_catalog.py``
fails when a stage is named in a list or an if-chain anywhere else. Adding a model stage is one
module in ``stages/`` (a workflow: ``workflows/``), its config class in ``config.py``, one entry here and its tests
(CONTRIBUTING.md, "Adding a stage").

Nothing here imports a stage: a stage's module is imported when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from emotion_exp import console

Closing = Callable[[Mapping[str, float], Mapping[str, str]], str]


@dataclass(frozen=True)
class StageSpec:
    """One stage: what runs it, what configures it, and what the workflows may do with it."""

    name: str
    """The command, the MLproject entry point and the runs' ``stage`` tag."""
    module: str
    """Its module under ``emotion_exp`` (``stages.dummy``, ``workflows.study``): its ``run(config, ...)`` runs it."""
    config: str
    """The name of its config dataclass in ``config.py``: the single source of its defaults."""
    help: str
    kind: Literal["stage", "workflow"] = "stage"
    """A workflow runs other stages as nested runs (the study, the sweep, the learning curve)."""
    search_space: str = ""
    """Its default sweep space in ``--search_space``'s language; '' = the sweep cannot search it."""
    searchable: tuple[str, ...] = ()
    """What ``--search_space`` may name besides the defaults: parameters of the trial, not of its data."""
    learning_curve: bool = False
    """Whether the learning curve can train it on subsets of the training split."""
    reads_features: bool = False
    """Fits on an extract run's features (``features_run_id``): a sweep or curve extracts once for all."""
    reports_epochs: bool = False
    """Reports a validation score per epoch, so a sweep can prune it (``callbacks``)."""
    seedless: str = ""
    """Why its fit does not depend on the seed, where it does not: ``--seeds`` then fits once
    (``stages.seeds``; tests/test_seeds.py checks the claim)."""
    in_study: bool = False
    """The study (``main``) runs it, in registry order, as a nested run."""
    compared: bool = False
    """A model stage of the study: its scores go into the study's comparison (``compared_in_study``)."""
    set_by_the_study: Mapping[str, Any] = field(default_factory=dict)
    """What the study decides for it instead of ``main``'s options (``config.SET_BY_THE_STUDY``)."""
    closing: Closing | None = console.scores_closing
    """The words of the line it ends with; None: it ends with its own summary instead."""

    def run(self, config: Any, **options: Any) -> str:
        """Run the stage (its module imported now); return its run id."""
        return importlib.import_module(f"emotion_exp.{self.module}").run(config, **options)


_SEARCH_C = "C=0.001..100:log,class_weight=none|balanced"

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "main",
            "workflows.study",
            "MainConfig",
            "Run the whole study: extract, dummy, probe, tfidf, finetune and promote as nested runs of one parent "
            "run, then log the comparison table and chart on the parent.",
            kind="workflow",
            closing=None,
        ),
        StageSpec(
            "extract",
            "stages.extract",
            "ExtractConfig",
            "Extract the encoder's pooled last hidden states for every split; log them with UMAP plots.",
            closing=console.extract_closing,
            in_study=True,
        ),
        StageSpec(
            "dummy",
            "stages.dummy",
            "DummyConfig",
            "Fit the DummyClassifier baseline (most frequent class by default) and log its scores.",
            in_study=True,
            compared=True,
        ),
        StageSpec(
            "probe",
            "stages.probe",
            "ProbeConfig",
            "Fit a logistic-regression probe on extracted features (reusing a matching extract run).",
            search_space=_SEARCH_C,
            searchable=("C", "class_weight", "max_iter"),
            learning_curve=True,
            reads_features=True,
            seedless="its lbfgs solver is deterministic, so every seed gives the same fit",
            in_study=True,
            compared=True,
            # the probe reads the study's extract run, and only promote registers (whichever run is best)
            set_by_the_study={"features_run_id": "", "registered_model": ""},
        ),
        StageSpec(
            "tfidf",
            "stages.tfidf",
            "TfidfConfig",
            "Fit the TF-IDF word and character n-gram baseline with a calibrated linear SVM on raw text.",
            search_space=_SEARCH_C,
            searchable=("C", "class_weight"),
            learning_curve=True,
            seedless="its linear SVM solves a strictly convex problem, so every seed reaches the same optimum (up "
            "to the solver's tolerance)",
            in_study=True,
            compared=True,
            set_by_the_study={"registered_model": ""},
        ),
        StageSpec(
            "finetune",
            "stages.finetune",
            "FinetuneConfig",
            "Fine-tune the encoder end to end with the transformers Trainer; log and register the model.",
            search_space="learning_rate=1e-5..5e-4:log,epochs=1..5,warmup=0.0..0.2,weight_decay=0.0..0.1,"
            "batch_size=16|32|64",
            searchable=("learning_rate", "epochs", "warmup", "weight_decay", "batch_size", "max_length"),
            learning_curve=True,
            reports_epochs=True,
            in_study=True,
            compared=True,
            # finetune trains in the study's own process (torchrun runs `finetune` on its own)
            set_by_the_study={"registered_model": "", "nproc_per_node": 1},
        ),
        StageSpec(
            "promote",
            "stages.promote",
            "PromoteConfig",
            "Move the champion alias to the best finished run of this dataset where it is better than the champion "
            "on the same validation texts beyond chance (--rule significant: McNemar at --alpha, and by "
            "--min_delta), or by any margin (--rule better).",
            closing=console.promote_closing,
            in_study=True,
        ),
        StageSpec(
            "predict",
            "stages.predict",
            "PredictConfig",
            "Label the texts of a file with a registered model (default: the champion).",
            closing=console.predict_closing,
        ),
        StageSpec(
            "evaluate",
            "stages.evaluate",
            "EvaluateConfig",
            "Score a logged or registered model (default: the champion) on labelled data: metrics, error analysis "
            "and calibration in a run tagged stage=evaluate, and the scores as tags on the model version.",
            closing=console.evaluated_closing,
        ),
        StageSpec(
            "compare",
            "stages.compare",
            "CompareConfig",
            "Compare two runs on the same data text by text: each one's accuracy with its 95% interval, the paired "
            "differences in accuracy and weighted F1 with theirs, and the exact McNemar p-value, on validation and "
            "test; logged in a run tagged stage=compare. RUN_A and RUN_B: run ids, models:/<name>/<version>, "
            "models:/<name>@<alias> or runs:/<run id>/<stage>; with --parent, stage names of that study. Runs on "
            "different data are refused.",
            closing=console.compare_closing,
        ),
        StageSpec(
            "clean-stale",
            "stages.clean_stale",
            "CleanStaleConfig",
            "Mark RUNNING runs whose process is gone (killed, crashed) as FAILED.",
        ),
        StageSpec(
            "sweep",
            "workflows.sweep",
            "SweepConfig",
            "Search one stage's parameters with Optuna (TPE seeded by --seed), each trial a nested run selected on "
            "validation; score the best trial on test once, register its model. --study_name resumes a study.",
            kind="workflow",
        ),
        StageSpec(
            "learning-curve",
            "workflows.learning_curve",
            "LearningCurveConfig",
            "Train each chosen stage on nested stratified subsets of the training split, one nested run per point, "
            "scored on the full validation and test splits; log the curve on the parent run.",
            kind="workflow",
        ),
    )
}


def sweepable() -> tuple[str, ...]:
    """The stages a sweep can search, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.search_space)


def on_the_learning_curve() -> tuple[str, ...]:
    """The stages the learning curve can train on subsets, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.learning_curve)


def compared_in_study() -> tuple[str, ...]:
    """The study's model stages, compared on its parent run, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.compared)


def closing_line(stage: str, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]) -> str | None:
    """The one line a finished stage ends with (its words, then its run id); None for one that ends otherwise."""
    closing = STAGES[stage].closing if stage in STAGES else console.scores_closing
    return None if closing is None else f"{stage}: {closing(metrics, tags)} (run {run_id})"
