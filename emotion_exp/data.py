"""Load the emotion data (bundled sample, local files or a hub id) into ``DatasetSplits``.

Every mistake a user can fix (a missing file, a wrong column, an empty text, a label that only
the test split has...) raises ``UserError`` naming the file, what was found and how to fix it,
before any model work starts.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from emotion_exp.config import BUNDLED_SAMPLE, DataConfig
from emotion_exp.errors import UserError
from emotion_exp.texts import DEFAULT_MAX_CHARS, where
from emotion_exp.texts import problems as text_problems

STUDY_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
SPLITS = ("train", "validation", "test")
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")
SAMPLE_NAME = "emotion-sample"

_SAMPLE_DIR = Path(__file__).with_name("sample")
_SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
# A hub id is "name" or "owner/name"; anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")
_HUB_TIMEOUT_S = 10.0
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_SHOWN = 5
OVERLAP_WARNING_SHARE = 0.01
"""Stages warn when more than this share of the validation or test texts are also training texts."""
_DATASET_FORMS = (
    "expected 'sample' (the bundled sample), a CSV/TSV/JSONL/Parquet file, a folder with "
    "train/validation/test files, or a hub id such as 'dair-ai/emotion'"
)


@dataclass(frozen=True, eq=False, repr=False)
class DatasetSplits:
    """The three splits with integer labels indexing one shared ``label_names``."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: tuple[str, ...]
    source: str
    name: str

    def split(self, name: str) -> pd.DataFrame:
        """The split called ``name`` (one of ``SPLITS``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {name!r}")
        return getattr(self, name)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of every split's texts and labels and the label names: equal data, equal digest.

        Runs are matched by it (feature reuse, champion comparison), so it ignores where the
        data came from and JSON-encodes the values so that no two datasets share an encoding.
        """
        sha = hashlib.sha256(json.dumps(list(self.label_names)).encode())
        for name in SPLITS:
            frame = self.split(name)
            payload = [name, frame["text"].tolist(), frame["label"].tolist()]
            sha.update(json.dumps(payload, ensure_ascii=False).encode())
        return sha.hexdigest()

    @functools.cached_property
    def train_overlap(self) -> TrainOverlap:
        """How many validation and test texts are also training texts, word for word.

        A set of Python strings: milliseconds for 16,000 texts, where pandas' ``isin`` on its string
        dtype took a third of a second.
        """
        train = set(self.train["text"].tolist())
        return TrainOverlap(
            {split: sum(text in train for text in self.split(split)["text"].tolist()) for split in SPLITS[1:]},
            {split: len(self.split(split)) for split in SPLITS[1:]},
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(self.split(name))}" for name in SPLITS)
        return f"DatasetSplits(name={self.name!r}, {sizes}, label_names={self.label_names})"


@dataclass(frozen=True)
class TrainOverlap:
    """Rows of validation and test whose text is also a training text, compared as loaded (case and spacing kept).

    A model has seen those texts with their labels, so its scores on them say how well it remembers,
    not how it does on new texts: a test split copied into train scores 1.000.
    """

    in_train: dict[str, int]
    rows: dict[str, int]

    def describe(self) -> str:
        """``validation 0/200, test 200/200``."""
        return ", ".join(f"{split} {count}/{self.rows[split]}" for split, count in self.in_train.items())

    def warning(self) -> str | None:
        """One sentence when a split's share is above ``OVERLAP_WARNING_SHARE``, else None."""
        shares = {split: count / max(self.rows[split], 1) for split, count in self.in_train.items()}
        over = [split for split, share in shares.items() if share > OVERLAP_WARNING_SHARE]
        if not over:
            return None
        counts = " and ".join(
            f"{self.in_train[split]} of {self.rows[split]} {split} texts ({shares[split]:.0%})" for split in over
        )
        return (
            f"{counts} are also in train, word for word: scores on them show what the model remembers, not how it "
            "does on new texts; remove each from one of the two splits."
        )


def load_splits(config: DataConfig) -> DatasetSplits:
    """Resolve ``config.dataset`` and return validated, label-encoded, capped splits."""
    spec = config.dataset
    if spec == BUNDLED_SAMPLE:
        return _from_folder(_SAMPLE_DIR, config, SAMPLE_NAME)
    path = Path(spec).expanduser()
    if spec.strip() and path.is_dir():
        return _from_folder(path, config, path.resolve().name)
    if path.is_file():
        return _from_file(path, config)
    if not spec.strip() or path.suffix.lower() in SUFFIXES or not _HUB_ID.fullmatch(spec):
        raise UserError(f"Dataset path {spec!r} does not exist; {_DATASET_FORMS}.")
    frames, known_names = _read_hub(config)
    frames, label_names = _encode(frames, config, known_names)
    return _assemble(frames, label_names, config, source=spec, name=spec)


@dataclass(frozen=True, eq=False)
class LabelledData:
    """One labelled split to evaluate a model on; ``label`` holds the data's own labels (names or ids)."""

    frame: pd.DataFrame
    split: str
    source: str
    name: str
    whole_file: bool
    """A single file, scored whole rather than split."""

    @property
    def dataset_name(self) -> str:
        """The name of its MLflow dataset: the file's name for a whole file, else ``<name>-<split>``."""
        return self.name if self.whole_file else f"{self.name}-{self.split}"

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the texts and labels, so that evaluations of the same data carry the same key."""
        payload = [self.frame["text"].tolist(), [str(label) for label in self.frame["label"]]]
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()

    @classmethod
    def from_splits(cls, splits: DatasetSplits, split: str) -> LabelledData:
        """One split of already loaded data, labels as names (``main`` evaluates its test split so)."""
        frame = splits.split(split)
        names = frame["label"].map(dict(enumerate(splits.label_names)))
        return cls(pd.DataFrame({"text": frame["text"], "label": names}), split, splits.source, splits.name, False)


def load_labelled(dataset: str, split: str, text_column: str = "text", label_column: str = "label") -> LabelledData:
    """Labelled texts to evaluate on: a file whole, or ``split`` of a folder, the sample or a hub dataset.

    Labels stay as the data has them (names, or integer ids); a hub dataset's ids become its
    label names. Nothing is capped or split: the evaluation sees every row.
    """
    config = DataConfig(dataset=dataset, text_column=text_column, label_column=label_column)
    path = Path(dataset).expanduser()
    if dataset == BUNDLED_SAMPLE or (dataset.strip() and path.is_dir()):
        folder = _SAMPLE_DIR if dataset == BUNDLED_SAMPLE else path
        frame = _read_labelled(_split_files(folder)[split], config)
        name = SAMPLE_NAME if dataset == BUNDLED_SAMPLE else path.resolve().name
        return LabelledData(frame.reset_index(drop=True), split, str(folder.resolve()), name, False)
    if path.is_file():
        frame = _read_labelled(path, config)
        return LabelledData(frame.reset_index(drop=True), split, str(path.resolve()), path.stem, True)
    if not dataset.strip() or path.suffix.lower() in SUFFIXES or not _HUB_ID.fullmatch(dataset):
        raise UserError(f"Dataset path {dataset!r} does not exist; {_DATASET_FORMS}.")
    frames, known_names = _read_hub(config)
    frame = frames[split].reset_index(drop=True)
    if known_names is not None:
        named = dict(enumerate(known_names))
        frame["label"] = frame["label"].map(lambda value: named.get(value, value) if isinstance(value, int) else value)
    return LabelledData(frame, split, dataset, dataset, False)


def read_texts(path: str | Path, text_column: str = "text", skip_empty: bool = False) -> pd.DataFrame:
    """Read a file of texts to label, keeping every column so outputs can carry them along.

    A ``.txt`` file holds one text a line (blank lines ignored) and gives a ``text`` column.
    Empty texts are refused unless ``skip_empty``; null and non-text values always are, and so
    are texts longer than ``texts.DEFAULT_MAX_CHARS`` characters (the bound every model logs).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"Input file '{path}' does not exist; expected a CSV, TSV, JSON Lines, Parquet or "
            ".txt (one text a line) file."
        )
    if path.is_dir():
        raise UserError(f"Input '{path}' is a folder; pass one file of texts (CSV, TSV, JSON Lines, Parquet or .txt).")
    column = "text" if _suffix(path) == ".txt" else text_column
    frame = _read_table(path, txt_columns=(column,))
    check_columns(frame, str(path), {column: "--text_column"})
    check_texts(frame[column], str(path), _unit(path), skip_empty, max_chars=DEFAULT_MAX_CHARS)
    return frame.reset_index(drop=True)


# --- resolving the three sources -------------------------------------------------------------


def _from_folder(folder: Path, config: DataConfig, name: str) -> DatasetSplits:
    files = _split_files(folder)
    frames = {split: _read_labelled(files[split], config) for split in SPLITS}
    frames, label_names = _encode(frames, config)
    return _assemble(frames, label_names, config, source=str(folder.resolve()), name=name)


def _from_file(path: Path, config: DataConfig) -> DatasetSplits:
    whole, label_names = _encode({"train": _read_labelled(path, config)}, config)
    frames = _stratified_split(whole["train"], label_names, config, str(path))
    return _assemble(frames, label_names, config, source=str(path.resolve()), name=path.stem)


def _split_files(folder: Path) -> dict[str, Path]:
    """The train, validation (or val) and test file of ``folder``, in any supported format."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    found = {}
    for split, stems in _SPLIT_STEMS.items():
        matches = [p for p in files if p.stem.lower() in stems and _suffix(p) in SUFFIXES]
        if len(matches) > 1:
            raise UserError(
                f"Folder '{folder}' has several {split} files ({', '.join(p.name for p in matches)}); keep exactly one."
            )
        if matches:
            found[split] = matches[0]
    missing = [split for split in SPLITS if split not in found]
    if missing:
        listing = ", ".join(p.name for p in files[:10]) + (", ..." if len(files) > 10 else "")
        raise UserError(
            f"Folder '{folder}' has no {' or '.join(missing)} file (found: {listing or 'no files'}); "
            f"expected files named train, validation (or val) and test ending in {', '.join(SUFFIXES)}."
        )
    return found


def _read_hub(config: DataConfig) -> tuple[dict[str, pd.DataFrame], tuple[str, ...] | None]:
    """Load a hub dataset, failing at once (no retries) when the hub cannot be reached."""
    import datasets

    spec = config.dataset
    if any(_is_set(os.environ.get(variable)) for variable in _OFFLINE_VARIABLES):
        # datasets reads the offline switch when imported; set later, it would retry online.
        if not datasets.config.HF_HUB_OFFLINE:
            raise _hub_error(spec, "offline mode was switched on after the datasets library loaded")
    else:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HFValidationError, HTTPError

        try:
            HfApi().dataset_info(spec, timeout=_HUB_TIMEOUT_S)
        except (HTTPError, OSError, HFValidationError) as err:
            raise _hub_error(spec, _describe(err)) from err
    try:
        loaded = datasets.load_dataset(spec)
    except OSError as err:  # ConnectionError, DatasetNotFoundError (a FileNotFoundError)
        raise _hub_error(spec, _describe(err)) from err
    keys = {split: next((s for s in _SPLIT_STEMS[split] if s in loaded), None) for split in SPLITS}
    if None in keys.values():
        raise UserError(
            f"Hub dataset {spec!r} has splits {', '.join(loaded)}; expected train, validation "
            "(or val) and test: save it as a folder of split files and pass that folder."
        )
    feature = loaded[keys["train"]].features.get(config.label_column)
    known_names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    frames = {}
    for split, key in keys.items():
        frame = loaded[key].to_pandas()
        frame.index = pd.RangeIndex(1, len(frame) + 1)
        frames[split] = _validated(frame, f"Split {key!r} of hub dataset {spec!r}", "row", config)
    return frames, known_names


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"


def _hub_error(spec: str, reason: str) -> UserError:
    return UserError(
        f"Could not load dataset {spec!r} from the Hugging Face Hub ({reason}), and no local "
        "file or folder has that name; to work offline use the bundled sample (--dataset sample) "
        "or a local file (--dataset path/to/data.csv)."
    )


def _is_set(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


# --- reading files ---------------------------------------------------------------------------


def _read_labelled(path: Path, config: DataConfig) -> pd.DataFrame:
    frame = _read_table(path, txt_columns=(config.text_column, config.label_column))
    return _validated(frame, str(path), _unit(path), config)


def _read_table(path: Path, txt_columns: tuple[str, ...]) -> pd.DataFrame:
    """Read one file into a frame indexed by line number (row number for Parquet).

    ``txt_columns`` names the columns of a ``.txt`` file: one name reads each line as a text,
    two read the original release's ``text;label`` lines, split at the last ';'.
    """
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise UserError(
            f"'{path}' has the unsupported extension {suffix or '(none)'!r}; supported: {', '.join(SUFFIXES)}."
        )
    try:
        if path.stat().st_size == 0:
            raise empty_file_error(path)
        if suffix in (".csv", ".tsv"):
            frame = _read_delimited(path, suffix)
        elif suffix in (".jsonl", ".json"):
            frame = _read_json_lines(path)
        elif suffix == ".parquet":
            frame = _read_parquet(path)
        else:
            frame = _read_txt(path, txt_columns)
    except PermissionError as err:
        raise UserError(
            f"Cannot read '{path}': permission denied for this user; grant read access (chmod a+r) or copy it "
            "somewhere readable."
        ) from err
    if frame.empty:
        raise empty_file_error(path)
    return frame


def _read_delimited(path: Path, suffix: str) -> pd.DataFrame:
    """Every value as text, indexed by the line each row starts on.

    Read with the ``csv`` module rather than pandas, which takes rows that all have one field
    more than the header (an unquoted comma in every text) as an index column and silently cuts
    the texts: here a row whose field count is not the header's is an error naming its lines.
    TSV texts keep stray quote characters (no quote processing), so rows in = rows out. Values
    stay strings ("NA", "null" and "123" are texts); blank lines are dropped, and a row of empty
    fields (``""``, ``,``) is kept, so its empty text is refused or skipped like any other.
    """
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
    rows, numbers, wrong = [], [], []
    first_line = 1
    with _no_csv_field_limit(), path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True, **dialect)
        try:
            header = next(reader, None)
            while True:
                first_line = reader.line_num + 1
                record = next(reader, None)
                if record is None:
                    break
                if not record:  # a blank line
                    continue
                if header is not None and len(record) != len(header):
                    wrong.append((first_line, len(record)))
                    continue
                rows.append(record)
                numbers.append(first_line)
        except UnicodeDecodeError as err:
            raise _not_utf8(path, err) from err
        except csv.Error as err:
            raise UserError(
                f"Could not parse '{path}': the row starting on line {first_line} is malformed ({err}); "
                'fix its quotes (a text holding quotes or line breaks is written "...", with "" for a quote) '
                "or remove it."
            ) from err
    if header is None:
        raise empty_file_error(path)
    if wrong:
        counts = sorted({count for _, count in wrong})
        raise UserError(
            f"Could not parse '{path}': {len(wrong)} row(s) have {' or '.join(map(str, counts))} fields where "
            f"the header ({', '.join(header)}) has {len(header)} "
            f"({where([number for number, _ in wrong], 'line')}); put texts that hold a "
            f"{'tab' if suffix == '.tsv' else 'comma'} in double quotes, or fix those rows."
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise UserError(
            f"Could not parse '{path}': the header names column(s) {', '.join(map(repr, duplicates))} more than "
            "once; give every column its own name."
        )
    return pd.DataFrame(rows, columns=header, index=numbers, dtype=object)


@contextlib.contextmanager
def _no_csv_field_limit() -> Iterator[None]:
    """Lift the ``csv`` module's 128 KiB limit on one field for a read: a text may be longer."""
    previous = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_json_lines(path: Path) -> pd.DataFrame:
    records, numbers = [], []
    for number, line in _text_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f"Could not parse '{path}': line {number} is not valid JSON ({err.msg}); expected "
                "JSON Lines, one object per line."
            ) from err
        if not isinstance(record, dict):
            raise UserError(
                f"Could not parse '{path}': line {number} holds a JSON {type(record).__name__}; "
                "expected JSON Lines, one object per line."
            )
        records.append(record)
        numbers.append(number)
    return pd.DataFrame(records, index=numbers, dtype=object)  # object: a lone surrogate stays checkable


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except ValueError as err:  # pyarrow's ArrowInvalid
        raise UserError(f"Could not read '{path}' as Parquet ({err}); check that it is a Parquet file.") from err
    return frame.set_axis(pd.RangeIndex(1, len(frame) + 1))


def _read_txt(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    lines = _text_lines(path)
    numbers = [number for number, _ in lines]
    if len(columns) == 1:
        return pd.DataFrame({columns[0]: [line for _, line in lines]}, index=numbers)
    rows = []
    for number, line in lines:
        text, separator, label = line.rpartition(";")
        if not separator:
            raise UserError(f"Could not parse '{path}': line {number} has no ';'; expected one 'text;label' per line.")
        rows.append((text, label))
    return pd.DataFrame(rows, columns=list(columns), index=numbers)


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a UTF-8 file with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err
    return [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _unit(path: Path) -> str:
    return "row" if _suffix(path) == ".parquet" else "line"


def empty_file_error(path: Path) -> UserError:
    """The error for a file without rows of data (shared with the Spark engine, which reads files itself)."""
    return UserError(f"'{path}' is empty: it has no rows of data; fill it or point to another file.")


def _not_utf8(path: Path, err: UnicodeDecodeError) -> UserError:
    """Name the first byte of ``path`` that is not UTF-8 by its line, column and offset in the file.

    Found again in the file's bytes: ``err`` counts from the chunk a text stream was decoding, and
    the ``csv`` module's line count stops at the last row it parsed (it said line 1 for line 4).
    """
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")  # a byte order mark decodes (to U+FEFF): offsets count from the file's first byte
    except UnicodeDecodeError as first:
        line_start = raw.rfind(b"\n", 0, first.start) + 1
        before = raw[line_start : first.start].decode("utf-8").removeprefix("\ufeff")  # valid up to the bad byte
        line, column = raw.count(b"\n", 0, first.start) + 1, len(before) + 1
        where = f"line {line}, column {column}, byte {first.start} of the file"
        return UserError(f"'{path}' is not UTF-8 text ({first.reason} at {where}); save it as UTF-8.")
    return UserError(f"'{path}' is not UTF-8 text ({err.reason}); save it as UTF-8.")  # it changed since


# --- validation and label encoding -----------------------------------------------------------


def _validated(frame: pd.DataFrame, origin: str, unit: str, config: DataConfig) -> pd.DataFrame:
    """``text`` and normalised ``label`` columns, indexed like ``frame``, after every check."""
    check_columns(frame, origin, {config.text_column: "--text_column", config.label_column: "--label_column"})
    texts = frame[config.text_column]
    check_texts(texts, origin, unit)
    labels = frame[config.label_column].map(_label_value)
    bad = labels.isna()
    if bad.any():
        raise UserError(
            f"{origin} has {int(bad.sum())} empty or invalid label(s) in column "
            f"{config.label_column!r} ({where(list(labels.index[bad.to_numpy()]), unit)}); every row needs a label "
            "name or an integer id: fill in or remove those rows."
        )
    validated = pd.DataFrame({"text": texts.astype(str), "label": labels.astype(object)}, index=frame.index)
    validated.attrs["unit"] = unit  # for messages that name a label's line (or row)
    return validated


def check_columns(frame: pd.DataFrame, origin: str, flags: dict[str, str]) -> None:
    """Refuse a frame without the columns in ``flags``, naming the option (its value) that picks each one."""
    missing = [column for column in flags if column not in frame.columns]
    if missing:
        found = ", ".join(str(column) for column in frame.columns)
        raise UserError(
            f"{origin} has no column {' or '.join(map(repr, missing))} (columns found: {found}); "
            f"name the right column with {' and '.join(flags[column] for column in missing)}."
        )


def check_texts(
    texts: pd.Series, origin: str, unit: str, skip_empty: bool | None = None, max_chars: int | None = None
) -> None:
    """Refuse non-text values and empty texts, naming their lines (the rule of ``emotion_exp.texts``).

    ``skip_empty`` is predict's option (None where there is none, as in training data);
    ``max_chars`` bounds texts to label (None: unbounded, as in training data).
    """
    found = text_problems(texts, list(texts.index), max_chars=max_chars)
    if found.refused(bool(skip_empty)):
        fix = "fill in or remove those rows" + (" or pass --skip_empty" if skip_empty is False else "")
        if found.too_long:
            fix = f"split or shorten texts over {max_chars:,} characters; {fix}"
        raise UserError(
            f"{origin} has {found.describe(unit, bool(skip_empty))} in column {texts.name!r}; every row needs a "
            f"non-empty text: {fix}."
        )


_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def _label_value(value: Any) -> int | str | None:
    """A label as an integer id or a stripped name; None when empty, a fraction or neither.

    One rule for every format: a whole number is an id whether it was read as an integer, a
    float (Parquet's 2.0) or text (CSV's "2" or "2.0"); any other text is a name.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    if isinstance(value, str):
        name = value.strip()
        if name.isascii() and _NUMBER.fullmatch(name):
            number = float(name)
            return int(number) if number.is_integer() else None
        return name or None
    return None


def label_names_option(value: str) -> tuple[str, ...]:
    """``--label_names``: the comma-separated names, stripped; () when not given."""
    return tuple(name.strip() for name in value.split(",")) if value.strip() else ()


def _encode(
    frames: dict[str, pd.DataFrame], config: DataConfig, known_names: tuple[str, ...] | None = None
) -> tuple[dict[str, pd.DataFrame], tuple[str, ...]]:
    """Replace labels by ids into one ``label_names``; the rule is stated in ``--label_names``'s help.

    Integer ids are named by ``--label_names`` (id 0 first), else by the hub's names, else ids
    0-5 are the study's six emotions and other ids their own number. Names are ordered by
    ``--label_names``, else the study's order when they are its six, else sorted. Every split
    must use one kind: a mix of ids and names is an error.
    """
    labels = {split: frame["label"] for split, frame in frames.items()}
    given = label_names_option(config.label_names)
    _check_one_kind(frames)
    _check_given_names(given)
    ids_only = all(isinstance(value, int) for series in labels.values() for value in series)
    if ids_only and (given or known_names is not None):
        label_names = given or known_names
        ids = {index: index for index in range(len(label_names))}
    elif ids_only:
        found = sorted(set(labels["train"]))
        study = found == list(range(len(STUDY_LABELS)))
        label_names = STUDY_LABELS if study else tuple(str(value) for value in found)
        ids = {value: index for index, value in enumerate(found)}
    else:
        names = set(labels["train"])
        if given and set(given) != names:
            raise UserError(
                f"--label_names lists {', '.join(given)} but the train split's labels are {', '.join(sorted(names))}; "
                "for named labels --label_names sets their order and must list each of them once."
            )
        label_names = given or (STUDY_LABELS if names == set(STUDY_LABELS) else tuple(sorted(names)))
        ids = {name: index for index, name in enumerate(label_names)}
    if len(label_names) < 2:
        raise UserError(
            f"Only one class ({label_names[0]!r}) found in the training data; classification needs "
            "at least two: check --label_column or add rows of the other classes."
        )
    encoded = {}
    for split, series in labels.items():
        unknown = sorted(set(series) - ids.keys(), key=str)
        if unknown and (given or known_names is not None) and ids_only:
            source = "--label_names" if given else "the dataset's label names"
            raise UserError(
                f"The {split} split has label id(s) {_listed(unknown)} outside 0..{len(ids) - 1}, "
                f"the ids of {source} ({', '.join(label_names)}); fix those labels or name every id in --label_names."
            )
        if unknown:
            raise UserError(
                f"The {split} split has label(s) {_listed(unknown)} that the train split lacks "
                f"(train has: {', '.join(label_names)}); fix those labels or add the classes to train."
            )
        codes = series.map(ids).to_numpy(dtype=np.int64)
        encoded[split] = pd.DataFrame({"text": frames[split]["text"], "label": codes}, index=series.index)
    return encoded, label_names


def _check_one_kind(frames: dict[str, pd.DataFrame]) -> None:
    """Refuse labels that mix integer ids and names (``"0"`` and ``joy`` would silently make extra classes)."""
    first: dict[type, str] = {}
    for split, frame in frames.items():
        unit = frame.attrs.get("unit", "row")
        for index, value in frame["label"].items():
            kind = int if isinstance(value, int) else str
            first.setdefault(kind, f"{value!r} ({split} split, {unit} {index})")
        if len(first) == 2:
            raise UserError(
                f"The labels mix integer ids and names, such as {first[int]} and {first[str]}; use one kind in "
                "every split: all names, or all ids (named with --label_names)."
            )


def _check_given_names(given: tuple[str, ...]) -> None:
    if not given:
        return
    repeated = sorted({name for name in given if given.count(name) > 1})
    if "" in given or repeated:
        problem = "an empty name" if "" in given else f"{', '.join(map(repr, repeated))} more than once"
        raise UserError(
            f"--label_names has {problem}; give each label one non-empty name, comma-separated in id order "
            "(such as sadness,joy,love,anger,fear,surprise)."
        )


def _listed(values: list[Any]) -> str:
    return ", ".join(map(repr, values[:10])) + (", ..." if len(values) > 10 else "")


# --- splitting and capping -------------------------------------------------------------------


def _stratified_split(
    frame: pd.DataFrame, label_names: tuple[str, ...], config: DataConfig, origin: str
) -> dict[str, pd.DataFrame]:
    """Split one file into train/validation/test by stratified sampling, reproducibly by seed."""
    counts = frame["label"].value_counts().sort_index()
    rare = counts[counts < 3]
    if len(rare):
        classes = ", ".join(f"{label_names[label]!r} ({count})" for label, count in rare.items())
        raise UserError(
            f"{origin} has too few rows of class(es) {classes} to split: stratified splitting into "
            "train, validation and test needs at least 3 rows per class; add rows, remove those "
            "classes, or pass a folder with ready-made train/validation/test files."
        )
    total, classes = len(frame), len(counts)
    n_test = int(config.test_fraction * total + 0.5)
    n_validation = int(config.validation_fraction * total + 0.5)
    sizes = {"train": total - n_test - n_validation, "validation": n_validation, "test": n_test}
    if min(sizes.values()) < classes:
        shown = ", ".join(f"{size} {split}" for split, size in sizes.items())
        raise UserError(
            f"{origin} has {total} rows, which split into {shown}; stratified splitting needs at "
            f"least one row per class ({classes}) in each split: add rows or change "
            "--validation_fraction / --test_fraction."
        )
    rest, test = train_test_split(frame, test_size=n_test, stratify=frame["label"], random_state=config.seed)
    try:
        train, validation = train_test_split(
            rest, test_size=n_validation, stratify=rest["label"], random_state=config.seed
        )
    except ValueError as err:  # the checks above leave only this: a class with one row in ``rest``
        raise UserError(
            f"Could not split {origin} by stratified sampling: after the {n_test} test rows, a class "
            f"had one row left for train and validation, which need one each ({err}); add rows of "
            "the rarest classes or lower --test_fraction."
        ) from err
    return {"train": train.sort_index(), "validation": validation.sort_index(), "test": test.sort_index()}


def _assemble(
    frames: dict[str, pd.DataFrame], label_names: tuple[str, ...], config: DataConfig, source: str, name: str
) -> DatasetSplits:
    capped = {split: _cap(frames[split], config.max_samples, config.seed) for split in SPLITS}
    return DatasetSplits(**capped, label_names=tuple(label_names), source=source, name=name)


def _cap(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most ``limit`` rows (0 = all), drawn per class in proportion, each class kept if it fits."""
    if limit == 0 or len(frame) <= limit:
        return frame.reset_index(drop=True)
    labels = frame["label"].to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    each = 1 if limit >= len(classes) else 0
    quotas = each + _apportion(counts - each, limit - each * len(classes))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quotas)]
    return frame.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Whole shares of ``total`` in proportion to ``weights`` (largest remainders round up)."""
    if total == 0:
        return np.zeros_like(weights)
    exact = weights * total / weights.sum()
    shares = np.floor(exact).astype(weights.dtype)
    shares[np.argsort(shares - exact, kind="stable")[: total - shares.sum()]] += 1
    return shares
