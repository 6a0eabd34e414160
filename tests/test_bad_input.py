"""Every bad input, one table: a clear message, a non-zero exit, no traceback, no run left RUNNING.

The table holds the documented mistakes of every command (docs/data.md, docs/reliability.md,
each option's rule in --help); a test checks that every command has cases. Each case goes
through the real CLI (click's CliRunner) against the session's sqlite store. A case passes when
the command exits non-zero, prints one one-line ``Error:`` message holding every expected
fragment (what was expected and what was found) and never the "unexpected" the CLI keeps for
bugs, shows no traceback, and every MLflow run the command opened ended FAILED with that
message as its ``error`` tag.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from emotion_exp import registry
from emotion_exp.cli import cli
from tests.helpers import LABELS as SIX
from tests.pyfunc_models import LABELS, log_keyword_model

pytestmark = pytest.mark.filterwarnings("ignore:An input example was not provided")

HEADER = "text,label\n"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Inputs:
    """Where a case builds its files, and the shared fixtures it may point at."""

    folder: Path
    small_dataset: Path
    tiny_model_dir: Path
    prepared: tuple[str, ...] = ()
    """What the case's ``prepare`` made (a run id, a registered model name)."""

    def file(self, name: str, content: str | bytes) -> str:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def rows(self, name: str, labels: list[str]) -> str:
        """A CSV with one distinct text per label given."""
        return self.file(name, HEADER + "".join(f"text number {i} here,{label}\n" for i, label in enumerate(labels)))

    def splits(self, folder: str, test_labels: list[str]) -> str:
        """A folder dataset whose train and validation hold all six labels and test ``test_labels``."""
        for split, labels in (("train", list(SIX) * 2), ("validation", list(SIX)), ("test", test_labels)):
            self.rows(f"{folder}/{split}.csv", labels)
        return str(self.folder / folder)

    def texts(self) -> str:
        return self.file("texts.csv", "text\ni feel great\nim scared\n")


@dataclass(frozen=True)
class Case:
    """One bad input: the command line that contains it and what its message must say."""

    args: Callable[[Inputs], list[str]]
    expected: tuple[str, ...]
    """Fragments of the message: what was expected and what was found."""
    opens_run: bool = False
    """The stage opens its run before it finds the mistake, so a FAILED run must be there."""
    exit_code: int = 1
    prepare: Callable[[Inputs], list[str]] = field(default=lambda inputs: [])


def dummy(dataset: Callable[[Inputs], str]) -> Callable[[Inputs], list[str]]:
    """The dummy stage (the cheapest) on the dataset that ``dataset`` builds."""
    return lambda inputs: ["dummy", "--dataset", dataset(inputs)]


def on_small(stage: str, *extra: str) -> Callable[[Inputs], list[str]]:
    """``stage`` on the small dataset and tiny model, with ``extra`` options."""
    return lambda inputs: [
        stage,
        "--dataset",
        str(inputs.small_dataset),
        "--model",
        str(inputs.tiny_model_dir),
        "--umap_max_points",
        "50",
        *extra,
    ]


def other_dataset_extract_run(inputs: Inputs) -> list[str]:
    """A finished extract run on another dataset than the small one; its id is the case's argument."""
    runner = CliRunner()
    data = inputs.splits("other-data", list(SIX))
    result = runner.invoke(
        cli, ["extract", "--dataset", data, "--model", str(inputs.tiny_model_dir), "--umap_max_points", "50"]
    )
    assert result.exit_code == 0, result.output
    [run] = mlflow.search_runs(filter_string="tags.stage = 'extract'", output_format="list")
    return [run.info.run_id]


def newest_run(args: list[str]) -> str:
    """Run a command that must succeed; the id of the newest run in the experiment (the one it made)."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    newest, *_ = mlflow.search_runs(output_format="list")
    return newest.info.run_id


def a_dummy_run(inputs: Inputs) -> list[str]:
    """A finished dummy run on the small data (made once, shared by the cases that only read it)."""
    return [shared_dummy_runs(inputs)[0]]


_SHARED_RUNS: dict[str, tuple[str, str, str]] = {}


def shared_dummy_runs(inputs: Inputs) -> tuple[str, str, str]:
    """Finished dummy runs made once per store: on the small data, the same but deleted, and on other data."""
    store = mlflow.get_tracking_uri()
    if store not in _SHARED_RUNS:
        small, deleted = (newest_run(["dummy", "--dataset", str(inputs.small_dataset)]) for _ in range(2))
        mlflow.MlflowClient().delete_run(deleted)
        other = newest_run(["dummy", "--dataset", inputs.splits("other-data", list(SIX))])
        _SHARED_RUNS[store] = (small, deleted, other)
    return _SHARED_RUNS[store]


def registered_without_alias(inputs: Inputs) -> list[str]:
    name = f"bad-input-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run():
        registry.register(log_keyword_model(input_example=False), name, LABELS)
    return [name]


def hard_link(inputs: Inputs) -> str:
    link = inputs.folder / "hard.csv"
    link.hardlink_to(inputs.texts())
    return str(link)


def symbolic_link(inputs: Inputs) -> str:
    link = inputs.folder / "link.csv"
    link.symlink_to(inputs.file("precious.txt", "keep me"))
    return str(link)


def sklearn_model() -> str:
    from sklearn.dummy import DummyClassifier

    with mlflow.start_run():
        return mlflow.sklearn.log_model(DummyClassifier().fit([[0], [1]], [0, 1]), name="model").model_uri


CASES = {
    # --- the data contract, through the cheapest stage ---------------------------------------
    "missing dataset path": Case(
        dummy(lambda i: "no/such/data.csv"),
        ("Dataset path 'no/such/data.csv' does not exist", "expected 'sample'", "a CSV/TSV/JSONL/Parquet file"),
        opens_run=True,
    ),
    "folder without split files": Case(
        dummy(lambda i: str(Path(i.file("notes/readme.md", "hello")).parent)),
        ("has no train or validation or test file", "found: readme.md", "expected files named train, validation"),
        opens_run=True,
    ),
    "unsupported extension": Case(
        dummy(lambda i: i.file("data.xlsx", "text,label\n")),
        ("data.xlsx' has the unsupported extension '.xlsx'", "supported: .csv, .tsv"),
        opens_run=True,
    ),
    "empty file": Case(
        dummy(lambda i: i.file("empty.csv", "")),
        ("empty.csv' is empty", "no rows"),
        opens_run=True,
    ),
    "unparsable csv": Case(
        dummy(lambda i: i.file("broken.csv", HEADER + "fine text,joy\nfine too,sadness\nan,extra,comma\n")),
        ("Could not parse", "broken.csv", "1 row(s) have 3 fields where the header (text, label) has 2 (line 4)"),
        opens_run=True,
    ),
    "unparsable json lines": Case(
        dummy(lambda i: i.file("broken.jsonl", '{"text": "ok", "label": "joy"}\n{"text": "no end"\n')),
        ("Could not parse", "broken.jsonl", "line 2 is not valid JSON", "JSON Lines"),
        opens_run=True,
    ),
    "missing text column": Case(
        dummy(lambda i: i.file("cols.csv", "sentence,label\nhi,joy\n")),
        ("has no column 'text'", "columns found: sentence, label", "--text_column"),
        opens_run=True,
    ),
    "missing label column": Case(
        dummy(lambda i: i.file("cols.csv", "text,emotion\nhi,joy\n")),
        ("has no column 'label'", "columns found: text, emotion", "--label_column"),
        opens_run=True,
    ),
    "empty texts": Case(
        dummy(lambda i: i.file("gaps.csv", HEADER + "fine,joy\n,sadness\nfine too,joy\n   ,anger\n")),
        ("has 2 empty or whitespace-only text(s) (lines 3, 5) in column 'text'",),
        opens_run=True,
    ),
    "non-text values": Case(
        dummy(
            lambda i: i.file(
                "numbers.jsonl",
                "\n".join(
                    json.dumps(r)
                    for r in [
                        {"text": "ok", "label": "joy"},
                        {"text": 42, "label": "joy"},
                        {"text": None, "label": "sadness"},
                    ]
                )
                + "\n",
            )
        ),
        ("has 2 null or non-text value(s) (lines 2, 3) in column 'text'",),
        opens_run=True,
    ),
    "csv rows with an unquoted comma": Case(
        dummy(lambda i: i.file("commas.csv", HEADER + "well, i am happy,joy\nhonestly, this is scary,fear\n")),
        ("2 row(s) have 3 fields where the header (text, label) has 2 (lines 2, 3)", "double quotes"),
        opens_run=True,
    ),
    "json lines with a lone surrogate": Case(
        dummy(
            lambda i: i.file("surrogate.jsonl", '{"text": "ok", "label": "joy"}\n{"text": "\\ud800", "label": "joy"}\n')
        ),
        ("1 text(s) that are not valid Unicode", "(line 2)"),
        opens_run=True,
    ),
    "labels mixing ids and names": Case(
        dummy(lambda i: i.rows("mixed.csv", ["0", "joy"] * 6)),
        ("The labels mix integer ids and names, such as 0 (train split, line 2) and 'joy'",),
        opens_run=True,
    ),
    "label_names that do not fit the ids": Case(
        lambda i: ["dummy", "--dataset", i.rows("ids.csv", ["0", "1", "2"] * 4), "--label_names", "a,b"],
        ("label id(s) 2 outside 0..1, the ids of --label_names (a, b)",),
        opens_run=True,
    ),
    "label that train lacks": Case(
        dummy(lambda i: i.splits("unseen", ["joy", "sadness", "boredom"])),
        ("The test split has label(s) 'boredom' that the train split lacks", "train has: sadness, joy"),
        opens_run=True,
    ),
    "single class": Case(
        dummy(lambda i: i.rows("one.csv", ["joy"] * 12)),
        ("Only one class ('joy')", "needs at least two"),
        opens_run=True,
    ),
    "too few rows of a class to split": Case(
        dummy(lambda i: i.rows("rare.csv", ["joy"] * 10 + ["fear"] * 2)),
        ("too few rows of class(es) 'fear' (2) to split", "at least 3 rows per class"),
        opens_run=True,
    ),
    "too few rows to split": Case(
        dummy(lambda i: i.rows("tiny.csv", ["joy"] * 4 + ["fear"] * 4)),
        ("has 8 rows, which split into 6 train, 1 validation, 1 test", "at least one row per class (2)"),
        opens_run=True,
    ),
    "fractions leave no training rows": Case(
        lambda i: ["dummy", "--validation_fraction", "0.5", "--test_fraction", "0.5"],
        ("--validation_fraction plus --test_fraction must leave rows for training", "0.5 + 0.5"),
    ),
    "negative max_samples": Case(
        lambda i: ["dummy", "--max_samples", "-1"],
        ("--max_samples must be at least 0; got -1",),
    ),
    # --- models ------------------------------------------------------------------------------
    "unknown model offline (finetune)": Case(
        lambda i: [
            "finetune",
            "--dataset",
            str(i.small_dataset),
            "--model",
            "no-such-org/no-such-model",
            "--registered_model",
            "",
        ],
        ("'no-such-org/no-such-model' could not be loaded", "not a local folder", "Hugging Face cache"),
        opens_run=True,
    ),
    "unknown model offline (extract)": Case(
        lambda i: ["extract", "--dataset", str(i.small_dataset), "--model", "no-such-org/no-such-model"],
        ("'no-such-org/no-such-model' could not be loaded", "not a local folder", "Hugging Face cache"),
        opens_run=True,
    ),
    "folder that is not a model": Case(
        lambda i: [
            "extract",
            "--dataset",
            str(i.small_dataset),
            "--model",
            str(Path(i.file("no-model/x.txt", "")).parent),
        ],
        ("could not be loaded by transformers", "save_pretrained"),
        opens_run=True,
    ),
    # --- parameter values (refused before any run starts) -----------------------------------
    "precision fp16": Case(
        on_small("extract", "--precision", "fp16"),
        ("--precision must be one of auto, fp32, bf16; got 'fp16'",),
    ),
    "precision int8 for finetune": Case(
        on_small("finetune", "--precision", "int8"),
        ("--precision must be one of auto, fp32, bf16; got 'int8'",),
    ),
    "epochs zero": Case(on_small("finetune", "--epochs", "0"), ("--epochs must be greater than 0; got 0",)),
    "batch_size zero": Case(on_small("extract", "--batch_size", "0"), ("--batch_size must be at least 1; got 0",)),
    "batch_size not whole": Case(
        on_small("finetune", "--batch_size", "2.5"),
        ("Invalid value for '--batch_size'", "expected a whole number, got '2.5'"),
        exit_code=2,
    ),
    "max_length negative": Case(
        on_small("extract", "--max_length", "-8"), ("--max_length must be at least 1; got -8",)
    ),
    "learning_rate zero": Case(
        on_small("finetune", "--learning_rate", "0"), ("--learning_rate must be greater than 0; got 0",)
    ),
    "learning_rate negative": Case(
        on_small("finetune", "--learning_rate", "-0.001"), ("--learning_rate must be greater than 0; got -0.001",)
    ),
    "unknown pooling": Case(
        on_small("extract", "--pooling", "max"), ("--pooling must be one of cls, mean; got 'max'",)
    ),
    "unknown dummy strategy": Case(
        lambda i: ["dummy", "--strategy", "constant"], ("--strategy must be one of most_frequent", "got 'constant'")
    ),
    "registered model name with a slash": Case(
        on_small("finetune", "--registered_model", "team/emotion"),
        ("--registered_model 'team/emotion' is not a valid registered model name", "cannot contain '/' or ':'"),
    ),
    "registered model name with a quote": Case(
        on_small("probe", "--registered_model", "it's-mine"),
        ('--registered_model "it\'s-mine" holds a quote or backslash',),
    ),
    "registered model name that is a path": Case(
        lambda i: ["promote", "--registered_model", ".."],
        ("--registered_model '..' is not a valid registered model name", "must not resolve to other names"),
    ),
    "umap_max_points below what UMAP needs": Case(
        on_small("extract", "--umap_max_points", "1"), ("--umap_max_points must be at least 4; got 1",)
    ),
    "negative seed": Case(on_small("extract", "--seed", "-1"), ("--seed must be at least 0; got -1",)),
    "seed beyond 32 bits": Case(
        on_small("extract", "--seed", str(2**32)), ("--seed must be at most 4294967295; got 4294967296",)
    ),
    "resume of a path": Case(on_small("finetune", "--resume", "../x"), ("--resume '../x' is not an MLflow run id",)),
    "features_run_id of a path": Case(
        on_small("probe", "--features_run_id", "a/b"), ("--features_run_id 'a/b' is not an MLflow run id",)
    ),
    "unknown promote metric": Case(
        lambda i: ["promote", "--metric", "loss"], ("--metric must be one of val_f1_weighted", "got 'loss'")
    ),
    # --- runs referred to by id --------------------------------------------------------------
    "features_run_id that does not exist": Case(
        on_small("probe", "--features_run_id", UNKNOWN_RUN),
        (f"--features_run_id {UNKNOWN_RUN}: there is no such run", "pass the id of a finished extract run"),
        opens_run=True,
    ),
    "features_run_id that is not an extract run": Case(
        lambda i: on_small("probe", "--features_run_id", i.prepared[0])(i),
        ("is a FINISHED 'dummy' run, not a finished extract run",),
        opens_run=True,
        prepare=a_dummy_run,
    ),
    "features_run_id of another dataset": Case(
        lambda i: on_small("probe", "--features_run_id", i.prepared[0])(i),
        ("holds features of another dataset (other-data", "pass an extract run of the same data"),
        opens_run=True,
        prepare=other_dataset_extract_run,
    ),
    "resume of an unknown run": Case(
        on_small("finetune", "--resume", UNKNOWN_RUN),
        (f"--resume {UNKNOWN_RUN}: no such run in the MLflow store", "interrupted finetune run"),
    ),
    "resume of a run that is not a finetune run": Case(
        lambda i: on_small("finetune", "--resume", i.prepared[0])(i),
        ("that run is a 'dummy' run, not a finetune run",),
        prepare=a_dummy_run,
    ),
    # --- predict -----------------------------------------------------------------------------
    "predict with a missing registered model": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", "models:/no-such-model@champion"],
        ("no registered model named 'no-such-model'", "registered models:"),
    ),
    "predict with a missing alias": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", f"models:/{i.prepared[0]}@champion"],
        ("has no alias @champion", "versions: 1; aliases: none"),
        prepare=registered_without_alias,
    ),
    "predict with a missing input file": Case(
        lambda i: ["predict", "--input", str(i.folder / "nothing.csv")],
        ("nothing.csv' does not exist", "expected a CSV"),
    ),
    "predict with a missing text column": Case(
        lambda i: ["predict", "--input", i.file("sentences.csv", "sentence\nhello\n")],
        ("has no column 'text'", "columns found: sentence", "--text_column"),
    ),
    "predict csv with an unquoted comma": Case(
        lambda i: ["predict", "--input", i.file("c.csv", "text\nwell, i am happy today\nhonestly, this is scary\n")],
        ("2 row(s) have 2 fields where the header (text) has 1 (lines 2, 3)",),
    ),
    "predict with empty texts": Case(
        lambda i: ["predict", "--input", i.file("gaps.csv", 'text\nfine\n""\n  \n')],
        ("2 empty or whitespace-only text(s) (lines 3, 4)", "--skip_empty"),
    ),
    "predict with null texts, even with skip_empty": Case(
        lambda i: ["predict", "--input", i.file("nulls.jsonl", '{"text": "ok"}\n{"text": null}\n'), "--skip_empty"],
        ("1 null or non-text value(s) (line 2)",),
    ),
    "predict output that is a hard link to the input": Case(
        lambda i: ["predict", "--input", i.texts(), "--output", hard_link(i), "--overwrite"],
        ("is the input file", "never overwrites its input"),
    ),
    "predict output that is a symbolic link": Case(
        lambda i: ["predict", "--input", i.texts(), "--output", symbolic_link(i)],
        ("is a symbolic link; predict does not write through links",),
    ),
    "predict output that exists": Case(
        lambda i: ["predict", "--input", i.texts(), "--output", i.file("old.csv", "kept")],
        ("already exists; pass --overwrite to replace it",),
    ),
    "predict output that is a folder": Case(
        lambda i: ["predict", "--input", i.texts(), "--output", str(Path(i.file("out.csv/x", "")).parent)],
        ("is a folder; pass a file name",),
    ),
    "predict input that is a folder": Case(
        lambda i: ["predict", "--input", str(Path(i.file("in.csv/x", "")).parent)],
        ("is a folder; pass one file of texts",),
    ),
    "predict with another project's model": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", i.prepared[0]],
        ("is not an emotion-exp text classifier", "its signature outputs"),
        prepare=lambda i: [sklearn_model()],
    ),
    "predict output equal to input": Case(
        lambda i: ["predict", "--input", i.texts(), "--output", i.texts()],
        ("is the input file", "never overwrites its input"),
    ),
    # --- issue 36: input mistakes that ended in another library's error, printed as "unexpected" -----------
    "predict with a byte that is not UTF-8 on line 4": Case(
        lambda i: ["predict", "--input", i.file("latin1.csv", b"text\nok\nfine\nbad \xff byte\n")],
        ("latin1.csv' is not UTF-8 text (invalid start byte at line 4, column 5, byte 17 of the file)",),
    ),
    "predict with texts that show nothing": Case(
        lambda i: ["predict", "--input", i.file("marks.csv", "text\nfine\n\u200b\u200f\n".encode())],
        ("1 empty or whitespace-only text(s) (line 3)", "--skip_empty"),
    ),
    "predict with a text over max_chars": Case(
        lambda i: ["predict", "--input", i.file("long.csv", f"text\nfine\n{'x' * 100_001}\n")],
        ("1 text(s) longer than 100,000 characters (line 3)", "split or shorten"),
    ),
    "predict with an unsupported extension": Case(
        lambda i: ["predict", "--input", i.file("texts.xlsx", "text\nhi\n")],
        ("texts.xlsx' has the unsupported extension '.xlsx'",),
    ),
    "predict with an empty file": Case(
        lambda i: ["predict", "--input", i.file("none.csv", "")], ("none.csv' is empty",)
    ),
    "predict with a runs uri that is a path": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", "runs:/../../etc"],
        ("runs:/../../etc: the run id '..' is not an MLflow run id",),
    ),
    "predict with a models uri without a name": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", "models:/"],
        ("'models:/' is not a model URI: expected models:/<name>/<version>, models:/<name>@<alias> or runs:/",),
    ),
    "predict with a models uri naming a path": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", "models:/../x"],
        ("models:/../x: the model name '..' is not a valid registered model name",),
    ),
    "predict with an empty model uri": Case(
        lambda i: ["predict", "--input", i.texts(), "--model_uri", ""], ("The model URI is empty: expected models:/",)
    ),
    "predict engine unknown": Case(
        lambda i: ["predict", "--input", i.texts(), "--engine", "dask"],
        ("--engine must be one of local, spark; got 'dask'",),
    ),
    "predict runtime unknown": Case(
        lambda i: ["predict", "--input", i.texts(), "--runtime", "tensorrt"],
        ("--runtime must be one of auto, torch, onnx, onnx-int8; got 'tensorrt'",),
    ),
    "predict threads not a number": Case(
        lambda i: ["predict", "--input", i.texts(), "--threads", "many"],
        ("--threads must be 'auto' or a whole number of at least 1; got 'many'",),
    ),
    "predict batch_size zero": Case(
        lambda i: ["predict", "--input", i.texts(), "--batch_size", "0"], ("--batch_size must be at least 1; got 0",)
    ),
    "evaluate with a label_map that is no pairs": Case(
        lambda i: ["evaluate", "--label_map", "joy"], ("--label_map must be old=new pairs separated by commas",)
    ),
    "evaluate split unknown": Case(
        lambda i: ["evaluate", "--split", "dev"], ("--split must be one of train, validation, test; got 'dev'",)
    ),
    "evaluate with a runs uri that is a path": Case(
        lambda i: ["evaluate", "--model_uri", "runs:/../../etc"], ("the run id '..' is not an MLflow run id",)
    ),
    "evaluate with a missing dataset": Case(
        lambda i: ["evaluate", "--dataset", "no/such/data.csv"], ("Dataset path 'no/such/data.csv' does not exist",)
    ),
    "evaluate with labels the model does not know": Case(
        lambda i: [
            "evaluate",
            "--model_uri",
            f"models:/{i.prepared[0]}/1",
            "--dataset",
            i.rows("new.csv", ["joy", "boredom"]),
        ],
        ("does not know: 'boredom' (1 rows)", "rename them with --label_map old=new"),
        prepare=registered_without_alias,
    ),
    "compare a run with itself": Case(
        lambda i: ["compare", i.prepared[0], i.prepared[0]], ("are the same run",), prepare=a_dummy_run
    ),
    "compare a run with its own runs uri": Case(
        lambda i: ["compare", i.prepared[0], f"runs:/{i.prepared[0]}/model"],
        ("are the same run",),
        prepare=a_dummy_run,
    ),
    "compare a deleted run": Case(
        lambda i: ["compare", *i.prepared],
        ("is deleted", "mlflow runs restore --run-id"),
        prepare=lambda i: list(shared_dummy_runs(i)[:2]),
    ),
    "compare runs on other data": Case(
        lambda i: ["compare", *i.prepared],
        ("were scored on different data", "Compare runs of the same dataset"),
        prepare=lambda i: [shared_dummy_runs(i)[0], shared_dummy_runs(i)[2]],
    ),
    "compare with a runs uri that is a path": Case(
        lambda i: ["compare", UNKNOWN_RUN, "runs:/../../etc"], ("the run id '..' is not an MLflow run id",)
    ),
    "compare something that is no run": Case(
        lambda i: ["compare", UNKNOWN_RUN, "../x"], ("'../x' is neither a run id (32 hexadecimal characters)",)
    ),
    "compare an unknown run": Case(
        lambda i: ["compare", UNKNOWN_RUN, UNKNOWN_RUN[::-1]], (f"No run {UNKNOWN_RUN} in the MLflow store",)
    ),
    "compare one run": Case(lambda i: ["compare", UNKNOWN_RUN], ("compare needs two runs",)),
    "compare parent that is a path": Case(
        lambda i: ["compare", "--parent", "../x"], ("--parent '../x' is not an MLflow run id",)
    ),
    "sweep optuna_storage that is no url": Case(
        lambda i: ["sweep", "--optuna_storage", "notaurl"], ("--optuna_storage 'notaurl' is not a database URL",)
    ),
    "sweep optuna_storage of an unknown kind": Case(
        lambda i: ["sweep", "--optuna_storage", "redis://127.0.0.1:6379"], ("SQLAlchemy has no database kind 'redis'",)
    ),
    "sweep optuna_storage in a missing folder": Case(
        lambda i: ["sweep", "--optuna_storage", f"sqlite:///{i.folder}/no/such/optuna.db"],
        ("of the sqlite file does not exist",),
    ),
    "sweep search_space with an infinite bound": Case(
        lambda i: ["sweep", "--search_space", "C=1..inf"], ("C takes finite numbers; got 'inf'",)
    ),
    "sweep search_space naming a parameter twice": Case(
        lambda i: ["sweep", "--search_space", "C=1,C=2"], ("--search_space names C twice",)
    ),
    "sweep search_space of an unknown parameter": Case(
        lambda i: ["sweep", "--search_space", "nope=1"], ("'nope' is not searchable for the tfidf stage",)
    ),
    "sweep stage unknown": Case(lambda i: ["sweep", "--stage", "dummy"], ("--stage must be one of probe, tfidf",)),
    "sweep n_trials zero": Case(lambda i: ["sweep", "--n_trials", "0"], ("--n_trials must be at least 1; got 0",)),
    "learning-curve fractions out of range": Case(
        lambda i: ["learning-curve", "--fractions", "0,2"], ("--fractions must be distinct shares",)
    ),
    "learning-curve fractions that are no numbers": Case(
        lambda i: ["learning-curve", "--fractions", "abc"], ("--fractions must be numbers",)
    ),
    "learning-curve stage unknown": Case(
        lambda i: ["learning-curve", "--stages", "dummy"], ("--stages must name distinct stages among",)
    ),
    "promote rule unknown": Case(
        lambda i: ["promote", "--rule", "always"], ("--rule must be one of significant, better; got 'always'",)
    ),
    "promote without a registered model": Case(
        lambda i: ["promote", "--registered_model", ""], ("--registered_model is empty",)
    ),
    "main precision fp16": Case(lambda i: ["main", "--precision", "fp16"], ("--precision must be one of auto",)),
    "main on a missing dataset": Case(
        lambda i: ["main", "--dataset", "no/such/data.csv"],
        ("Dataset path 'no/such/data.csv' does not exist",),
        opens_run=True,
    ),
    "tfidf seeds that are no count": Case(
        lambda i: ["tfidf", "--seeds", "abc"], ("--seeds takes a count such as 3 or a list of seeds",)
    ),
    "tfidf seeds repeated": Case(lambda i: ["tfidf", "--seeds", "1,1"], ("--seeds must be distinct seeds",)),
    "clean-stale dry_run that is no boolean": Case(
        lambda i: ["clean-stale", "--dry_run", "maybe"], ("'maybe' is not a valid boolean",), exit_code=2
    ),
}


def message_of(result: Result) -> str:
    """The text after the last ``Error:`` that the CLI printed."""
    assert "Error: " in result.output, result.output
    return result.output.rsplit("Error: ", 1)[1].strip()


def run_ids() -> set[str]:
    return {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}


# End to end through a trained model or features run: seconds each, so the fast loop leaves them to CI.
SLOW_CASES = {"features_run_id of another dataset", "predict with another project's model"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=[pytest.mark.slow] if name in SLOW_CASES else []) for name, case in CASES.items()],
    ids=list(CASES),
)
def test_bad_input_gets_a_clear_message_and_a_failed_run(
    case: Case, tmp_path: Path, small_dataset: Path, tiny_model_dir: Path
) -> None:
    inputs = Inputs(tmp_path / "inputs", small_dataset, tiny_model_dir)
    inputs = dataclasses.replace(inputs, prepared=tuple(case.prepare(inputs)))
    before = run_ids()

    result = CliRunner().invoke(cli, case.args(inputs), env={"EMOTION_EXP_DEBUG": None})

    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output
    assert "unexpected" not in result.output  # the word the CLI keeps for bugs
    assert result.output.count("Error: ") == 1
    message = message_of(result)
    assert "\n" not in message, message
    for fragment in case.expected:
        assert fragment in message, message
    opened = [mlflow.get_run(run_id) for run_id in run_ids() - before]
    if case.opens_run:
        assert opened, "the stage should have opened a run before it found the mistake"
    for run in opened:
        assert run.info.status == "FAILED"
        assert run.data.tags["error"] == message


def test_every_command_has_its_bad_inputs_in_the_table(tmp_path: Path) -> None:
    inputs = Inputs(tmp_path, tmp_path, tmp_path, prepared=(UNKNOWN_RUN, UNKNOWN_RUN))
    covered = {case.args(inputs)[0] for case in CASES.values()}
    assert covered == set(cli.commands)


@pytest.mark.parametrize("switch", ["--debug", "EMOTION_EXP_DEBUG=1"])
def test_debug_shows_the_traceback(switch: str, tmp_path: Path) -> None:
    env = {"EMOTION_EXP_DEBUG": "1" if switch.startswith("EMOTION") else None}
    args = (["--debug"] if switch == "--debug" else []) + ["dummy", "--dataset", "no/such/data.csv"]

    result = CliRunner().invoke(cli, args, env=env)

    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.output
    assert "emotion_exp.errors.UserError: Dataset path 'no/such/data.csv' does not exist" in result.output
    assert message_of(result).startswith("Dataset path 'no/such/data.csv' does not exist")


def test_over_long_texts_are_truncated_and_counted_not_refused(small_dataset: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = {}
    for split, prefix in (("train", "train"), ("validation", "val"), ("test", "test")):
        texts = pd.read_csv(small_dataset / f"{split}.csv")["text"].tolist()
        expected[prefix] = sum(len(ids) > 8 for ids in tokenizer(texts)["input_ids"])
    assert all(expected.values())  # the sample has texts longer than 8 tokens in every split

    args = on_small("extract", "--max_length", "8")(Inputs(Path(), small_dataset, tiny_model_dir))
    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 0, result.output
    [run] = mlflow.search_runs(output_format="list")
    assert run.info.status == "FINISHED"
    assert {f"truncated_{p}": run.data.metrics[f"truncated_{p}"] for p in expected} == {
        f"truncated_{p}": n for p, n in expected.items()
    }


@pytest.mark.slow
def test_a_command_that_fails_in_a_folder_without_a_store_leaves_none_behind(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    command = [sys.executable, "-m", "emotion_exp", "dummy", "--dataset", str(tmp_path / "nope.csv")]

    failed = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert failed.returncode != 0 and "does not exist" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    # A store that was there before the command is never touched, failed runs and all.
    (tmp_path / "mlflow.db").write_bytes(b"")
    again = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0
    assert (tmp_path / "mlflow.db").exists()
