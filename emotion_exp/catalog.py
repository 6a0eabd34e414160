"""The stage registry: every command declared once, and everything that lists stages reads it here.

A ``StageSpec`` names a stage's config class (``config.py``: its options, defaults, checks and
search space), the module whose ``run`` runs it, and what the workflows may do with it. The
command line (``cli.py``), the ``MLproject`` entry points and main's generated fields
(``mlproject.py``), the sweep's and the learning curve's choices of stages, the study and its
comparison, and the closing line each stage ends with all iterate over ``STAGES``;
``tests/test_catalog.py`` fails when a stage is named in a list or an if-chain anywhere else.

A model stage's ``run`` follows one contract, ``StageRun``: every argument a workflow passes.
Adding a model stage is one module in ``stages/`` (a feature head: its classifier only, see
``stages/feature_head.py``), its config class, one entry here and its tests (CONTRIBUTING.md,
"Adding a stage").

The workflows' configs (``MainConfig``, ``SweepConfig``, ``LearningCurveConfig``) live here
because they follow from the registry: which stages a sweep may search, which a curve may
train, every option of main. Nothing here imports a stage: a stage's module is imported when it
runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from emotion_exp import console
from emotion_exp.config import (
    AT_LEAST_ONE,
    FOLLOW_THE_DATA,
    NOT_NEGATIVE,
    REGISTER_HELP,
    CleanStaleConfig,
    CompareConfig,
    DummyConfig,
    EncoderConfig,
    EvaluateConfig,
    ExtractConfig,
    FeatureHeadConfig,
    FinetuneConfig,
    Interval,
    KnnConfig,
    Options,
    PredictConfig,
    ProbeConfig,
    PromoteConfig,
    TfidfConfig,
    TrainingConfig,
    check,
    field_types,
    option,
    registered_model_name,
    same_field,
)
from emotion_exp.errors import UserError
from emotion_exp.study_fields import StudyFields

if TYPE_CHECKING:
    from emotion_exp.data import DatasetSplits
    from emotion_exp.tracking import RunLabels

ConfigT = TypeVar("ConfigT")
ConfigT_contra = TypeVar("ConfigT_contra", contravariant=True)
Closing = Callable[[Mapping[str, float], Mapping[str, str]], str]


class StageRun(Protocol[ConfigT_contra]):
    """The ``run`` of a model stage: everything the study, the sweep, the learning curve and ``--seeds`` pass.

    ``splits``: the data a parent loaded once (None: the stage loads it from its config).
    ``train_rows``: fit on these rows of the training split only, scored on the whole validation
    and test splits (a learning-curve point). ``score_test=False``: the test split stays unscored
    (a sweep's trial). ``labels``: a workflow's params and tags for the run, which learns the
    run's id. Returns the run id. A stage that reports a score per epoch (``reports_epochs``)
    takes ``callbacks`` besides; tests/test_catalog.py checks every model stage's signature.
    """

    def __call__(
        self,
        config: ConfigT_contra,
        *,
        splits: DatasetSplits | None = None,
        train_rows: Sequence[int] | None = None,
        score_test: bool = True,
        labels: RunLabels | None = None,
    ) -> str: ...


@dataclass(frozen=True)
class StageSpec(Generic[ConfigT]):
    """One stage: what configures it, what runs it, and what the workflows may do with it."""

    name: str
    """The command, the MLproject entry point and the runs' ``stage`` tag."""
    config: type[ConfigT]
    """Its config dataclass: the single source of its options, defaults, checks and search space."""
    module: str
    """The module whose ``run(config, ...)`` runs it (``emotion_exp.stages.knn``); imported when it runs."""
    help: str
    kind: Literal["stage", "workflow"] = "stage"
    """A workflow runs other stages as nested runs (the study, the sweep, the learning curve)."""
    learning_curve: bool = False
    """Whether the learning curve can train it on subsets of the training split."""
    reports_epochs: bool = False
    """Reports a validation score per epoch, so a sweep can prune it (its ``run`` takes ``callbacks``)."""
    seedless: str = ""
    """Why its fit does not depend on the seed, where it does not: ``--seeds`` then fits once
    (``stages.seeds``; tests/test_seeds.py checks the claim)."""
    in_study: bool = False
    """The study (``main``) runs it, in registry order, as a nested run."""
    compared: bool = False
    """A model stage of the study: its scores go into the study's comparison (``compared_in_study``)."""
    set_by_the_study: Mapping[str, Any] = field(default_factory=dict)
    """What a workflow decides for it besides what it decides for every model stage (``set_by_workflows``):
    finetune trains in the workflow's own process. Never an option of ``main``."""
    closing: Closing | None = console.scores_closing
    """The words of the line it ends with; None: it ends with its own summary instead."""

    @property
    def reads_features(self) -> bool:
        """A feature head: it fits on an extract run's features, so a workflow extracts once for all its runs."""
        return issubclass(self.config, FeatureHeadConfig)

    @property
    def sweepable(self) -> bool:
        """Its config declares a search space (``sweep_space()``), so ``sweep --stage`` can search it."""
        return hasattr(self.config, "sweep_space")

    @property
    def model_stage(self) -> bool:
        """A workflow trains it: its ``run`` follows ``StageRun``."""
        return self.compared or self.learning_curve or self.sweepable

    def set_by_workflows(self, features_run_id: str = "") -> dict[str, Any]:
        """What a workflow decides for a model stage it runs, instead of the stage's own options.

        It registers nothing (promote, or the sweep for its best trial, registers), a feature head
        reads the workflow's features (``features_run_id``), and ``set_by_the_study`` is added.
        """
        if not self.model_stage:
            return dict(self.set_by_the_study)
        config_class: Any = self.config
        fields = {f.name for f in dataclasses.fields(config_class)}
        decided = {"registered_model": "", "features_run_id": features_run_id, **self.set_by_the_study}
        return {name: value for name, value in decided.items() if name in fields}

    def run(self, config: ConfigT, **options: Any) -> str:
        """Run the stage (its module imported now); return its run id."""
        return importlib.import_module(self.module).run(config, **options)


def sweepable() -> tuple[str, ...]:
    """The stages a sweep can search, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.sweepable)


def on_the_learning_curve() -> tuple[str, ...]:
    """The stages the learning curve can train on subsets, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.learning_curve)


def in_the_study() -> tuple[str, ...]:
    """The stages the study runs, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.in_study)


def compared_in_study() -> tuple[str, ...]:
    """The study's model stages, compared on its parent run, in registry order."""
    return tuple(name for name, spec in STAGES.items() if spec.compared)


def closing_line(stage: str, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]) -> str | None:
    """The one line a finished stage ends with (its words, then its run id); None for one that ends otherwise."""
    closing = STAGES[stage].closing if stage in STAGES else console.scores_closing
    return None if closing is None else f"{stage}: {closing(metrics, tags)} (run {run_id})"


# --- main: its options are the study's stages' own ------------------------------------------------


@dataclass(frozen=True)
class StudyField:
    """One option of ``main``: which field of which stage's config it is."""

    name: str
    """Its name in ``main``: the field's own, or ``<stage>_<field>`` where stages declare fields of one name."""
    kind: type
    owner: type
    """The config class that declares it (the first of the study's stages that has it)."""
    field: str
    stage: str = ""
    """The stage named in its help where two stages' fields of one name both became options."""


def compose_study() -> tuple[list[StudyField], dict[str, dict[str, str]]]:
    """The options ``main`` must have: every field of the study's stages, each declared in its stage's config.

    A field that several stages share (inherited from one declaration: ``dataset``, ``model``,
    ``pooling`` ...) appears once under its own name. Where stages declare different fields of
    one name (``C`` of the probe and of tfidf), each becomes ``<stage>_<name>`` (``probe_C``,
    ``tfidf_C``). What a workflow decides (``set_by_workflows``) is no option of ``main``.
    Returns the options in order and, per stage, which option of ``main`` feeds each of its fields.
    ``python -m emotion_exp.mlproject`` writes the options into ``study_fields.py``.
    """
    declared: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for stage in in_the_study():
        decided = STAGES[stage].set_by_workflows()
        for spec in dataclasses.fields(STAGES[stage].config):
            if spec.name not in decided:
                declared.setdefault(spec.name, []).append((stage, spec))
    sources: dict[str, dict[str, str]] = {stage: {} for stage in in_the_study()}
    options: list[StudyField] = []
    for name, owners in declared.items():
        distinct = {id(spec): (stage, spec) for stage, spec in reversed(owners)}  # the first stage of each wins
        for stage, spec in reversed(list(distinct.values())):
            clash = len(distinct) > 1
            study_name = f"{stage}_{name}" if clash else name
            for owner, owner_spec in owners:
                if owner_spec is spec:
                    sources[owner][name] = study_name
            config_class = STAGES[stage].config
            kind = field_types(config_class)[name]
            options.append(StudyField(study_name, kind, config_class, name, stage if clash else ""))
    return options, sources


@dataclass(frozen=True)
class MainConfig(StudyFields):
    """The whole study: extract, every compared stage and promote as nested runs.

    Its fields (``study_fields.py``) are generated from the study's stages (``compose_study``);
    ``stage_config`` hands each stage its own config.
    """

    def __post_init__(self) -> None:
        check(self)
        for stage in in_the_study():
            self.stage_config(stage)  # each stage's own checks (fractions, warm-up)

    def stage_config(self, stage: str) -> Any:
        """The config the study runs ``stage`` with.

        A stage registered after ``study_fields.py`` was generated (before ``python -m
        emotion_exp.mlproject`` ran again, which tests/test_config.py demands) runs with its own
        defaults for the fields ``main`` does not have yet.
        """
        spec = STAGES[stage]
        own = {f.name for f in dataclasses.fields(self)}
        sources = compose_study()[1][stage]
        values = {name: getattr(self, main_name) for name, main_name in sources.items() if main_name in own}
        return spec.config(**values, **spec.set_by_workflows())


# --- the sweep and the learning curve ----------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig(EncoderConfig):
    """An Optuna study over one stage's parameters; every trial a nested run, selection on validation only."""

    stage: str = option("tfidf", "Stage whose parameters are searched.", Options(sweepable))
    n_trials: int = option(
        20,
        "Trials the study should hold (complete or pruned), between all its workers; a resumed study runs only the "
        "missing ones.",
        AT_LEAST_ONE,
    )
    timeout: float = option(
        0, "Start no new trial after this many seconds (0 = no limit).", Interval(Real, 0, None, closed="left")
    )
    study_name: str = option("", "Optuna study to create or, if it exists in the storage, resume ('' = a new name).")
    optuna_storage: str = option(
        "",
        "Optuna storage URL ('' = sqlite file optuna.db beside a sqlite tracking store; required for other "
        "tracking URIs). Never the tracking store's own database.",
    )
    search_space: str = option(
        "",
        "Override parts of the stage's search space: comma-separated NAME=LOW..HIGH (add :log for log-uniform), "
        "NAME=A|B|C (a choice) or NAME=VALUE (fixed), e.g. 'C=0.01..10:log,class_weight=balanced'.",
    )
    heartbeat: int = option(
        30,
        "Seconds between a worker's signs of life for its running trial: a trial silent for twice as long "
        "(its worker killed outright) is marked FAIL by the next worker that looks, and run again.",
        AT_LEAST_ONE,
    )
    pruner_startup_trials: int = option(
        5, "finetune: the median pruner prunes nothing until this many trials have finished.", NOT_NEGATIVE
    )
    pruner_warmup_epochs: int = option(0, "finetune: epochs of a trial that are never pruned.", NOT_NEGATIVE)
    pooling: str = same_field(ExtractConfig, "pooling", about="A feature head's sweep: ")
    max_iter: int = same_field(ProbeConfig, "max_iter", about="probe: ")
    output_dir: str = same_field(FinetuneConfig, "output_dir", about="finetune: ")
    registered_model: str = option(
        FOLLOW_THE_DATA, "The best trial's model: " + REGISTER_HELP, check=registered_model_name
    )


def _listed_values(text: str, what: str, example: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise UserError(f"--{what} needs a comma-separated list such as {example!r}; got {text!r}.")
    return values


@dataclass(frozen=True)
class LearningCurveConfig(TrainingConfig):
    """Each chosen stage on nested stratified subsets of the training split, scored on full validation and test."""

    fractions: str = option(
        "0.01,0.05,0.1,0.25,0.5,1.0", "Comma-separated shares of the training split, each above 0 and at most 1."
    )
    stages: str = option(
        "", "Comma-separated stages to train at every fraction ('' = every stage the curve can train, in order)."
    )
    pooling: str = same_field(ExtractConfig, "pooling", about="The feature heads' points: ")

    def __post_init__(self) -> None:
        super().__post_init__()
        fractions = self.fraction_list
        if any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) != len(fractions):
            raise UserError(
                "--fractions must be distinct shares of the training split above 0 and at most 1; "
                f"got {self.fractions!r}."
            )
        allowed = on_the_learning_curve()
        unknown = [s for s in self.stage_list if s not in allowed]
        if unknown or len(set(self.stage_list)) != len(self.stage_list):
            raise UserError(f"--stages must name distinct stages among {', '.join(allowed)}; got {self.stages!r}.")

    @property
    def fraction_list(self) -> list[float]:
        """The fractions in ascending order."""
        values = _listed_values(self.fractions, "fractions", "0.1,0.5,1.0")
        try:
            return sorted(float(v) for v in values)
        except ValueError:
            raise UserError(f"--fractions must be numbers such as '0.1,0.5,1.0'; got {self.fractions!r}.") from None

    @property
    def stage_list(self) -> list[str]:
        """The stages in the order given ('' = every stage on the learning curve, in registry order)."""
        if not self.stages.strip():
            return list(on_the_learning_curve())
        return _listed_values(self.stages, "stages", "tfidf,probe")


# --- the registry ---------------------------------------------------------------------------------


STAGES: dict[str, StageSpec[Any]] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "main",
            MainConfig,
            "emotion_exp.workflows.study",
            "Run the whole study: extract, every model stage of the comparison (dummy, the feature heads, tfidf, "
            "finetune) and promote as nested runs of one parent run, then log the comparison table and chart on the "
            "parent run.",
            kind="workflow",
            closing=None,
        ),
        StageSpec(
            "extract",
            ExtractConfig,
            "emotion_exp.stages.extract",
            "Extract the encoder's pooled last hidden states for every split; log them with UMAP plots.",
            closing=console.extract_closing,
            in_study=True,
        ),
        StageSpec(
            "dummy",
            DummyConfig,
            "emotion_exp.stages.dummy",
            "Fit the DummyClassifier baseline (most frequent class by default) and log its scores.",
            in_study=True,
            compared=True,
        ),
        StageSpec(
            "probe",
            ProbeConfig,
            "emotion_exp.stages.probe",
            "Fit a logistic-regression probe on extracted features (reusing a matching extract run).",
            learning_curve=True,
            seedless="its lbfgs solver is deterministic, so every seed gives the same fit",
            in_study=True,
            compared=True,
        ),
        StageSpec(
            "knn",
            KnnConfig,
            "emotion_exp.stages.knn",
            "Fit a k-nearest-neighbours classifier on extracted features (reusing a matching extract run).",
            learning_curve=True,
            seedless="a vote of the nearest training texts draws nothing at random",
            in_study=True,
            compared=True,
        ),
        StageSpec(
            "tfidf",
            TfidfConfig,
            "emotion_exp.stages.tfidf",
            "Fit the TF-IDF word and character n-gram baseline with a calibrated linear SVM on raw text.",
            learning_curve=True,
            seedless="its linear SVM solves a strictly convex problem, so every seed reaches the same optimum (up "
            "to the solver's tolerance)",
            in_study=True,
            compared=True,
        ),
        StageSpec(
            "finetune",
            FinetuneConfig,
            "emotion_exp.stages.finetune",
            "Fine-tune the encoder end to end with the transformers Trainer; log and register the model.",
            learning_curve=True,
            reports_epochs=True,
            in_study=True,
            compared=True,
            # finetune trains in the study's own process (torchrun runs `finetune` on its own)
            set_by_the_study={"nproc_per_node": 1},
        ),
        StageSpec(
            "promote",
            PromoteConfig,
            "emotion_exp.stages.promote",
            "Move the champion alias to the best finished run of this dataset where it is better than the champion "
            "on the same validation texts beyond chance (--rule significant: McNemar at --alpha, and by "
            "--min_delta), or by any margin (--rule better).",
            closing=console.promote_closing,
            in_study=True,
        ),
        StageSpec(
            "predict",
            PredictConfig,
            "emotion_exp.stages.predict",
            "Label the texts of a file with a registered model (default: the champion).",
            closing=console.predict_closing,
        ),
        StageSpec(
            "evaluate",
            EvaluateConfig,
            "emotion_exp.stages.evaluate",
            "Score a logged or registered model (default: the champion) on labelled data: metrics, error analysis "
            "and calibration in a run tagged stage=evaluate, and the scores as tags on the model version.",
            closing=console.evaluated_closing,
        ),
        StageSpec(
            "compare",
            CompareConfig,
            "emotion_exp.stages.compare",
            "Compare two runs on the same data text by text: each one's accuracy with its 95% interval, the paired "
            "differences in accuracy and weighted F1 with theirs, and the exact McNemar p-value, on validation and "
            "test; logged in a run tagged stage=compare. RUN_A and RUN_B: run ids, models:/<name>/<version>, "
            "models:/<name>@<alias> or runs:/<run id>/<stage>; with --parent, stage names of that study. Runs on "
            "different data are refused.",
            closing=console.compare_closing,
        ),
        StageSpec(
            "clean-stale",
            CleanStaleConfig,
            "emotion_exp.stages.clean_stale",
            "Mark RUNNING runs whose process is gone (killed, crashed) as FAILED.",
        ),
        StageSpec(
            "sweep",
            SweepConfig,
            "emotion_exp.workflows.sweep",
            "Search one stage's parameters with Optuna (TPE seeded by --seed), each trial a nested run selected on "
            "validation; score the best trial on test once, register its model. --study_name resumes a study.",
            kind="workflow",
        ),
        StageSpec(
            "learning-curve",
            LearningCurveConfig,
            "emotion_exp.workflows.learning_curve",
            "Train each chosen stage on nested stratified subsets of the training split, one nested run per point, "
            "scored on the full validation and test splits; log the curve on the parent run.",
            kind="workflow",
        ),
    )
}
