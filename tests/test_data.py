"""Tests for emotion_exp.data: formats, label encoding, splitting, capping, digest and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_exp import texts
from emotion_exp.config import DataConfig
from emotion_exp.data import SPLITS, STUDY_LABELS, DatasetSplits, load_splits, read_texts
from emotion_exp.errors import UserError
from emotion_exp.texts import DEFAULT_MAX_CHARS

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "emotion_exp" / "sample"


def labelled(per_class: dict[str, int], text_column: str = "text", label_column: str = "label") -> pd.DataFrame:
    """Distinct texts, ``per_class[name]`` rows of each class, classes interleaved."""
    rows = [
        (f"{name} example number {i} with some words", name) for name, count in per_class.items() for i in range(count)
    ]
    return pd.DataFrame(rows, columns=[text_column, label_column])


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format that ``path``'s extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        path.write_text(
            "\t".join(frame.columns)
            + "\n"
            + "".join("\t".join(map(str, row)) + "\n" for row in frame.itertuples(index=False)),
            encoding="utf-8",
        )
    elif suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".txt":
        path.write_text("".join(f"{t};{l}\n" for t, l in frame.itertuples(index=False)), encoding="utf-8")
    return path


def load(dataset: Path | str, **options) -> DatasetSplits:
    return load_splits(DataConfig(dataset=str(dataset), **options))


SIX = {"joy": 30, "sadness": 30, "anger": 20, "fear": 20, "love": 10, "surprise": 10}
THREE = {"calm": 10, "angry": 10, "happy": 10}


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt"])
def test_single_file_in_each_format(tmp_path, suffix):
    path = write(labelled(SIX), tmp_path / f"emo{suffix}")
    splits = load(path)
    assert splits.label_names == STUDY_LABELS
    assert splits.name == "emo"
    assert splits.source == str(path.resolve())
    assert sum(len(splits.split(s)) for s in SPLITS) == sum(SIX.values())
    for name in SPLITS:
        frame = splits.split(name)
        assert list(frame.columns) == ["text", "label"]
        assert frame["label"].dtype == np.int64
        assert isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0
        assert all(isinstance(text, str) for text in frame["text"])


@pytest.mark.parametrize("validation_stem", ["validation", "val"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".txt"])
def test_folder_of_split_files(tmp_path, suffix, validation_stem):
    folder = tmp_path / "emotion_data"
    write(labelled(SIX), folder / f"train{suffix}")
    write(labelled({"joy": 2, "fear": 1}), folder / f"{validation_stem}{suffix}")
    write(labelled({"sadness": 3}), folder / f"test{suffix}")
    splits = load(folder)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (120, 3, 3)
    assert splits.name == "emotion_data"
    assert splits.source == str(folder.resolve())
    assert splits.validation["label"].tolist() == [1, 1, 4]
    assert splits.test["label"].tolist() == [0, 0, 0]


def test_semicolon_txt_splits_at_the_last_semicolon_and_skips_blank_lines(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "train.txt").write_text("i feel; oddly fine;joy\n\ni am down;sadness\r\n  \n", encoding="utf-8")
    (folder / "val.txt").write_text("so happy;joy\n", encoding="utf-8")
    (folder / "test.txt").write_text("so sad ; really;sadness\n", encoding="utf-8")
    splits = load(folder)
    assert splits.train["text"].tolist() == ["i feel; oddly fine", "i am down"]
    assert splits.label_names == ("joy", "sadness")
    assert splits.test["text"].tolist() == ["so sad ; really"]


def test_tsv_keeps_stray_quotes_and_every_row(tmp_path):
    texts = ['he said "hi', '"quoted" start', "it's 'odd", 'a "b" c', 'end"', "NA", "null"]
    lines = ["text\tlabel"] + [f"{text}\t{label}" for text, label in zip(texts, ["joy", "fear"] * 4)]
    folder = tmp_path / "tsv"
    folder.mkdir()
    for split in SPLITS:
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = load(folder)
    assert splits.train["text"].tolist() == texts


# --- labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_class", "expected"),
    [
        (dict(reversed(SIX.items())), STUDY_LABELS),
        (THREE, ("angry", "calm", "happy")),
        ({"surprise": 10, "joy": 10, "fear": 10}, ("fear", "joy", "surprise")),
    ],
)
def test_label_name_order(tmp_path, per_class, expected):
    splits = load(write(labelled(per_class), tmp_path / "d.csv"))
    assert splits.label_names == expected


@pytest.mark.parametrize(
    ("ids", "expected_names"),
    [((0, 1, 2, 3, 4, 5), STUDY_LABELS), ((1, 3, 7), ("1", "3", "7")), ((10, 2), ("2", "10"))],
)
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_integer_labels(tmp_path, ids, expected_names, suffix):
    column = [ids[i % len(ids)] for i in range(10 * len(ids))]
    frame = pd.DataFrame({"text": [f"text {i} has id {label}" for i, label in enumerate(column)], "label": column})
    splits = load(write(frame, tmp_path / f"d{suffix}"))
    assert splits.label_names == expected_names
    name_of = dict(zip(sorted(ids), expected_names))
    for split in SPLITS:
        for text, label in zip(splits.split(split)["text"], splits.split(split)["label"]):
            assert splits.label_names[label] == name_of[int(text.rsplit(" ", 1)[1])]


@pytest.mark.parametrize(
    ("ids", "expected_names"),
    [((1.0, 2.0, 3.0), ("1", "2", "3")), ((0.0, 1.0, 2.0, 3.0, 4.0, 5.0), STUDY_LABELS)],
)
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_float_labels_are_ids_in_every_format(tmp_path, ids, expected_names, suffix):
    column = [ids[i % len(ids)] for i in range(10 * len(ids))]
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(len(column))], "label": column})
    assert load(write(frame, tmp_path / f"d{suffix}")).label_names == expected_names


def test_label_names_names_integer_ids_of_any_data(tmp_path):
    column = [i % 6 for i in range(60)]
    frame = pd.DataFrame({"text": [f"text {i} id {label}" for i, label in enumerate(column)], "label": column})
    path = write(frame, tmp_path / "d.csv")
    splits = load(path, label_names="a, b,c,d,e,f")
    assert splits.label_names == ("a", "b", "c", "d", "e", "f")
    assert {splits.label_names[label] for label in splits.train["label"]} == set("abcdef")
    assert all(text.endswith(f"id {label}") for text, label in zip(splits.train["text"], splits.train["label"]))
    assert load(path, label_names="0,1,2,3,4,5").label_names == ("0", "1", "2", "3", "4", "5")


def test_label_names_orders_named_labels(tmp_path):
    path = write(labelled(THREE), tmp_path / "d.csv")
    assert load(path, label_names="happy,calm,angry").label_names == ("happy", "calm", "angry")


@pytest.mark.parametrize(
    ("labels", "options", "match"),
    [
        (
            ["0", "joy"] * 10,
            {},
            (
                r"The labels mix integer ids and names, such as 0 \(train split, line 2\) and 'joy' "
                r"\(train split, line 3\); use one kind"
            ),
        ),
        ([0, 1, 2] * 10, {"label_names": "a,b"}, r"label id\(s\) 2 outside 0..1, the ids of --label_names \(a, b\)"),
        (["x", "y"] * 10, {"label_names": "x,z"}, r"--label_names lists x, z but the train split's labels are x, y"),
        ([0, 1] * 10, {"label_names": "a,,b"}, r"--label_names has an empty name"),
        ([0, 1] * 10, {"label_names": "a,a"}, r"--label_names has 'a' more than once"),
        ([0.5, 1] * 10, {}, r"10 empty or invalid label\(s\)"),
    ],
)
def test_label_rule_errors(tmp_path, labels, options, match):
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})
    with pytest.raises(UserError, match=match):
        load(write(frame, tmp_path / "d.csv"), **options)


def test_the_label_rule_is_in_the_help():
    from click.testing import CliRunner

    from emotion_exp.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["dummy", "--help"]).output.split())
    assert "a mix of the two is an error" in text
    assert "--label_names" in text and "ids 0-5 are the study's sadness, joy, love, anger, fear, surprise" in text


def test_custom_text_and_label_columns(tmp_path):
    frame = labelled(THREE, text_column="sentence", label_column="emotion").assign(extra=1)
    splits = load(write(frame, tmp_path / "d.csv"), text_column="sentence", label_column="emotion")
    assert list(splits.train.columns) == ["text", "label"]
    assert splits.label_names == ("angry", "calm", "happy")


def test_texts_like_na_and_numbers_stay_text(tmp_path):
    frame = pd.DataFrame({"text": ["NA", "null", "123", "None", "nan", "-"] * 3, "label": ["a", "b"] * 9})
    splits = load(write(frame, tmp_path / "d.csv"))
    texts = sorted(t for s in SPLITS for t in splits.split(s)["text"])
    assert texts == sorted(frame["text"])


# --- splitting, capping and digest -----------------------------------------------------------


def test_stratified_split_sizes_and_seed(tmp_path):
    path = write(labelled({"joy": 300, "sadness": 200, "fear": 100}), tmp_path / "d.csv")
    splits = load(path)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (480, 60, 60)
    assert splits.test["label"].value_counts().to_dict() == {1: 30, 2: 20, 0: 10}
    assert splits.validation["label"].value_counts().to_dict() == {1: 30, 2: 20, 0: 10}
    every_text = pd.concat([splits.split(s)["text"] for s in SPLITS])
    assert every_text.is_unique
    again = load(path)
    assert all(again.split(s).equals(splits.split(s)) for s in SPLITS)
    other = load(path, seed=7)
    assert not other.test["text"].equals(splits.test["text"])
    wider = load(path, validation_fraction=0.2, test_fraction=0.3)
    assert (len(wider.train), len(wider.validation), len(wider.test)) == (300, 120, 180)


def test_max_samples_caps_each_split_stratified(tmp_path):
    folder = tmp_path / "f"
    write(labelled({"joy": 500, "sadness": 300, "love": 15, "surprise": 1}), folder / "train.csv")
    write(labelled({"joy": 50, "sadness": 30, "love": 10, "surprise": 1}), folder / "validation.csv")
    write(labelled({"joy": 5, "love": 5}), folder / "test.csv")
    splits = load(folder, max_samples=40)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40, 40, 10)
    assert set(splits.train["label"]) == {0, 1, 2, 3}
    assert set(splits.validation["label"]) == {0, 1, 2, 3}
    counts = splits.train["label"].value_counts()
    assert counts[splits.label_names.index("joy")] > counts[splits.label_names.index("sadness")] > 1
    again = load(folder, max_samples=40)
    assert again.train.equals(splits.train)
    assert load(folder, max_samples=40, seed=1).digest != splits.digest
    assert len(load(folder, max_samples=0).train) == 816


@pytest.mark.slow  # starts a fresh Python process (the digest must not depend on it)
def test_digest_stable_and_sensitive(tmp_path):
    frame = labelled(SIX)
    path = write(frame, tmp_path / "a.csv")
    splits = load(path)
    assert len(splits.digest) == 64 and int(splits.digest, 16) >= 0  # sha256, in hex
    assert load(path).digest == splits.digest
    assert load(write(frame, tmp_path / "b.parquet")).digest == splits.digest
    changed = frame.copy()
    changed.loc[0, "label"] = "sadness"
    assert load(write(changed, tmp_path / "c.csv")).digest != splits.digest
    script = (
        "from emotion_exp.config import DataConfig; from emotion_exp.data import load_splits; "
        f"print(load_splits(DataConfig(dataset={str(tmp_path / 'a.csv')!r})).digest)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == splits.digest


# --- read_texts ------------------------------------------------------------------------------


def test_read_texts_csv_keeps_every_column(tmp_path):
    path = tmp_path / "in.csv"
    pd.DataFrame({"id": [7, 8], "sentence": ["i am glad", "NA"]}).to_csv(path, index=False)
    frame = read_texts(path, text_column="sentence")
    assert frame.to_dict("list") == {"id": ["7", "8"], "sentence": ["i am glad", "NA"]}
    assert isinstance(frame.index, pd.RangeIndex)


def test_read_texts_txt_one_text_a_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("first; with a semicolon\n\n  second  \n", encoding="utf-8")
    assert read_texts(path).to_dict("list") == {"text": ["first; with a semicolon", "  second  "]}


@pytest.mark.parametrize(
    ("name", "content", "options", "match"),
    [
        ("in.csv", "sentence\nhi\n", {}, r"has no column 'text' \(columns found: sentence\); .*--text_column"),
        ("in.txt", "\n \n", {}, r"in.txt' is empty"),
        (
            "in.csv",
            'id,text\n1,ok\n2, \n\n3,fine\n4,""\n',
            {},
            r"2 empty or whitespace-only text\(s\) \(lines 3, 6\) in column .text.*--skip_empty",
        ),
        ("in.xlsx", "x", {}, r"unsupported extension '.xlsx'; supported: .csv, .tsv, .jsonl"),
        # an unquoted comma in every text: pandas read the first part as the row index and cut the texts
        (
            "in.csv",
            "text\nwell, i am happy today\nhonestly, this is scary\n",
            {},
            r"2 row\(s\) have 2 fields where the header \(text\) has 1 \(lines 2, 3\); put texts that hold a comma in",
        ),
        ("in.tsv", "text\tid\na\tb\tc\nfine\t1\n", {}, r"1 row\(s\) have 3 fields .* has 2 \(line 2\); .* hold a tab"),
        ("in.csv", 'text\n"never closed\nabc\n', {}, r"the row starting on line 2 is malformed .*fix its quotes"),
        ("in.csv", "text,text\na,b\n", {}, r"the header names column\(s\) 'text' more than once"),
        # line numbers count the lines of a quoted multi-line text
        ("in.csv", 'id,text\n1,"two\nlines"\n2,\n', {}, r"1 empty or whitespace-only text\(s\) \(line 4\)"),
        (
            "in.jsonl",
            '{"text": "ok"}\n{"text": "\\ud800"}\n',
            {},
            r"1 text\(s\) that are not valid Unicode.* \(line 2\)",
        ),
        (
            "in.jsonl",
            '{"text": null}\n{"text": ["a"]}\n{"text": " "}\n',
            {},
            r"2 null or non-text value\(s\) \(lines 1, 2\); 1 empty",
        ),
    ],
)
def test_read_texts_errors(tmp_path, name, content, options, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        read_texts(path, **options)


def test_read_texts_quoted_multiline_texts_and_long_fields(tmp_path):
    path = tmp_path / "in.csv"
    long_text = "é" * DEFAULT_MAX_CHARS  # the longest text to label: beyond the csv module's 128 KiB field limit
    path.write_text(f'text,id\n"one, with\na line break",1\n{long_text},2\n"say ""hi""",3\n', encoding="utf-8")
    frame = read_texts(path)
    assert frame.to_dict("list") == {"text": ["one, with\na line break", long_text, 'say "hi"'], "id": ["1", "2", "3"]}


def test_read_texts_refuses_a_text_over_max_chars_naming_its_line_before_any_model_sees_it(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(f"text\nfine\n{'x' * (DEFAULT_MAX_CHARS + 1)}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"1 text\(s\) longer than 100,000 characters \(line 3\).*split or shorten"):
        read_texts(path)


def test_read_texts_skip_empty_keeps_empty_rows_but_not_nulls(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "  "}\n', encoding="utf-8")
    assert read_texts(path, skip_empty=True)["text"].tolist() == ["ok", "  "]
    path.write_text('{"text": "ok"}\n{"text": null}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"1 null or non-text value\(s\) \(line 2\)"):
        read_texts(path, skip_empty=True)


# Every mark texts.INVISIBLE lists, alone and with white space: none shows anything on its own.
INVISIBLE_ONLY = [
    *"\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
    "\u00ad\u061c\u180e\u2061\u2062\u2063\u2064",
    " \u200b\t\u2067\u2069 ",
]


@pytest.mark.parametrize("text", INVISIBLE_ONLY, ids=lambda text: "+".join(f"U+{ord(c):04X}" for c in text))
def test_a_text_of_only_invisible_marks_is_empty_to_the_text_rule(text):
    assert texts.blank(text)
    assert texts.problems(["visible", text]).empty == [1]
    assert not texts.blank(f"a{text}") and not texts.blank(f"{text}😀")


def test_training_data_and_texts_to_label_refuse_a_text_that_shows_nothing(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("text,label\nfine,joy\n\u200b\u202e,joy\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"1 empty or whitespace-only text\(s\) \(line 3\)"):
        read_texts(path)
    assert read_texts(path, skip_empty=True)["text"].tolist() == ["fine", "\u200b\u202e"]
    with pytest.raises(UserError, match=r"1 empty or whitespace-only text\(s\) \(line 3\)"):
        load(path)


# A file's header and the pattern of one of its lines, per format.
LINES = {
    "in.csv": ("text,id\n", "{},1\n"),
    "in.tsv": ("text\tid\n", "{}\t1\n"),
    "in.jsonl": ("", '{{"text": "{}"}}\n'),
    "in.txt": ("", "{}\n"),
}


@pytest.mark.parametrize("name", LINES)
@pytest.mark.parametrize("lines_before", [2, 3000])  # 3000: past the first chunk a text stream decodes
def test_a_byte_that_is_not_utf8_is_named_by_its_line_and_column(tmp_path, name, lines_before):
    """The csv module said line 1 for a bad byte on line 4; a whole-file read said only its offset."""
    header, pattern = LINES[name]
    good = "".join(pattern.format(f"fine text number {i} é") for i in range(lines_before)).encode()
    bad = pattern.format("été \udcff here").encode("utf-8", "surrogateescape")  # 0xff after "été ": column 5
    path = tmp_path / name
    path.write_bytes("\ufeff".encode() + header.encode() + good + bad)
    line = bool(header) + lines_before + 1
    offset = 3 + len(header) + len(good) + bad.index(b"\xff")
    with pytest.raises(UserError) as raised:
        read_texts(path)
    column = 5 + name.endswith(".jsonl") * len('{"text": "')
    assert f"(invalid start byte at line {line}, column {column}, byte {offset} of the file)" in str(raised.value)


def test_read_texts_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope.csv' does not exist; expected a CSV, TSV, JSON Lines, Parquet or .txt"):
        read_texts(tmp_path / "nope.csv")


# --- errors ----------------------------------------------------------------------------------

CSV_SIX = "text,label\n" + "".join(f"t{i},{STUDY_LABELS[i % 6]}\n" for i in range(60))


@pytest.mark.parametrize(
    ("files", "dataset", "options", "match"),
    [
        # missing path
        ({}, "missing.csv", {}, r"Dataset path 'missing.csv' does not exist; expected 'sample'.*a hub id"),
        ({}, "./missing_folder", {}, r"'./missing_folder' does not exist"),
        ({}, "a/b/c", {}, r"'a/b/c' does not exist"),
        ({}, "", {}, r"Dataset path '' does not exist"),
        # folder without split files
        (
            {"f/train.csv": CSV_SIX, "f/notes.md": "x"},
            "f",
            {},
            (
                r"has no validation or test file \(found: notes.md, train.csv\); expected files named "
                r"train, validation \(or val\) and test"
            ),
        ),
        (
            {"f/train.csv": CSV_SIX, "f/train.jsonl": "{}", "f/val.csv": "", "f/test.csv": ""},
            "f",
            {},
            r"several train files",
        ),
        # unsupported extension
        (
            {"d.xlsx": "x"},
            "d.xlsx",
            {},
            r"unsupported extension '.xlsx'; supported: .csv, .tsv, .jsonl, .json, .parquet, .txt",
        ),
        # empty file
        ({"d.csv": ""}, "d.csv", {}, r"d.csv' is empty"),
        ({"d.csv": "text,label\n"}, "d.csv", {}, r"d.csv' is empty"),
        ({"d.csv": "\n\n"}, "d.csv", {}, r"d.csv' is empty"),
        ({"d.jsonl": "\n \n"}, "d.jsonl", {}, r"d.jsonl' is empty"),
        # unparsable
        ({"d.csv": "text,label\na,joy\nb,joy,extra\n"}, "d.csv", {}, r"Could not parse '.*d.csv': .*line 3"),
        ({"d.tsv": "text\tlabel\na\tjoy\nb\tjoy\tx\n"}, "d.tsv", {}, r"Could not parse '.*d.tsv': .*line 3"),
        (
            {"d.jsonl": '{"text": "a", "label": 1}\n{"text": "b",\n'},
            "d.jsonl",
            {},
            r"d.jsonl': line 2 is not valid JSON",
        ),
        ({"d.jsonl": '{"text": "a", "label": 1}\n\n[1, 2]\n'}, "d.jsonl", {}, r"line 3 holds a JSON list"),
        ({"d.parquet": "not parquet at all"}, "d.parquet", {}, r"Could not read '.*d.parquet' as Parquet"),
        (
            {"f/train.txt": "a;joy\nno separator\n", "f/val.txt": "b;joy\n", "f/test.txt": "c;joy\n"},
            "f",
            {},
            r"train.txt': line 2 has no ';'",
        ),
        # missing columns
        (
            {"d.csv": "sentence,label\na,joy\n"},
            "d.csv",
            {},
            r"no column 'text' \(columns found: sentence, label\); .*--text_column",
        ),
        (
            {"d.csv": "text,emotion\na,joy\n"},
            "d.csv",
            {},
            r"no column 'label' \(columns found: text, emotion\); .*--label_column",
        ),
        ({"d.csv": "a,b\n1,2\n"}, "d.csv", {}, r"no column 'text' or 'label'.*--text_column and --label_column"),
        ({"d.csv": CSV_SIX}, "d.csv", {"text_column": "body"}, r"no column 'body' \(columns found: text, label\)"),
        # empty or non-text texts
        (
            {"d.csv": CSV_SIX + ",joy\n  ,joy\n"},
            "d.csv",
            {},
            r"d.csv has 2 empty or whitespace-only text\(s\) \(lines 62, 63\) in column 'text'",
        ),
        (
            {"d.jsonl": '{"text": "a", "label": 1}\n\n{"text": 5, "label": 1}\n{"label": 2}\n'},
            "d.jsonl",
            {},
            r"2 null or non-text value\(s\) \(lines 3, 4\)",
        ),
        (
            {"d.csv": "text,label\n" + "\n".join([",joy"] * 7) + "\n"},
            "d.csv",
            {},
            r"7 empty .*lines 2, 3, 4, 5, 6, \.\.\.\)",
        ),
        # empty or invalid labels
        ({"d.csv": CSV_SIX + "x,\n"}, "d.csv", {}, r"1 empty or invalid label\(s\) in column 'label' \(line 62\)"),
        ({"d.jsonl": '{"text": "a", "label": 1.5}\n'}, "d.jsonl", {}, r"invalid label\(s\) .*\(line 1\)"),
        # a label that train lacks
        (
            {"f/train.csv": CSV_SIX, "f/validation.csv": "text,label\nx,rage\ny,joy\nz,zeal\n", "f/test.csv": CSV_SIX},
            "f",
            {},
            r"The validation split has label\(s\) 'rage', 'zeal' that the train split lacks \(train has: sadness, joy",
        ),
        (
            {
                "f/train.csv": "text,label\na,0\nb,1\n",
                "f/validation.csv": "text,label\nc,1\n",
                "f/test.csv": "text,label\nd,2\n",
            },
            "f",
            {},
            r"The test split has label\(s\) 2 that the train split lacks",
        ),
        # fewer than two classes
        (
            {"d.csv": "text,label\na,joy\nb,joy\nc,joy\n"},
            "d.csv",
            {},
            r"Only one class \('joy'\) found in the training data; classification needs at least two",
        ),
        # too few rows to stratify
        (
            {"d.csv": CSV_SIX + "x,rage\ny,rage\nz,zeal\n"},
            "d.csv",
            {},
            r"too few rows of class\(es\) 'rage' \(2\), 'zeal' \(1\) to split: .*at least 3 rows per class",
        ),
        (
            {"d.csv": "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(6))},
            "d.csv",
            {},
            r"has 6 rows, which split into 4 train, 1 validation, 1 test; .*at least one row per class \(2\)",
        ),
        (
            {
                "d.csv": "text,label\n"
                + "".join(f"a{i},a\n" for i in range(3))
                + "".join(f"b{i},b\n" for i in range(100))
            },
            "d.csv",
            {"test_fraction": 0.5, "validation_fraction": 0.3},
            r"after the 52 test rows, a class had one row left for train and validation.*lower --test_fraction",
        ),
        # not UTF-8
        ({"d.csv": b"text,label\n\xff\xfe,joy\n"}, "d.csv", {}, r"is not UTF-8 text .*save it as UTF-8"),
    ],
)
def test_load_errors(tmp_path, monkeypatch, files, dataset, options, match):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=match):
        load_splits(DataConfig(dataset=dataset, **options))


# --- hub -------------------------------------------------------------------------------------

HUB_GUIDANCE = r"Could not load dataset '{}' from the Hugging Face Hub .*--dataset sample.*--dataset path/to/data.csv"


@pytest.mark.parametrize("datasets_saw_offline", [True, False])
def test_hub_offline_fails_at_once_with_guidance(tmp_path, monkeypatch, datasets_saw_offline):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # datasets reads the switch at import; when that happened before it was set, fail at once too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets_saw_offline)
    monkeypatch.chdir(tmp_path)
    dataset = "emotion-exp-tests/no-such-dataset"
    with pytest.raises(UserError, match=HUB_GUIDANCE.format(dataset)):
        load_splits(DataConfig(dataset=dataset))


def test_hub_unreachable_fails_with_guidance(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=HUB_GUIDANCE.format("dair-ai/emotion") + ".*") as caught:
        load_splits(DataConfig(dataset="dair-ai/emotion"))
    assert "Name or service not known" in str(caught.value)


# --- the bundled sample ----------------------------------------------------------------------


def test_bundled_sample_is_a_faithful_learnable_miniature():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    splits = load_splits(DataConfig())
    assert splits.name == "emotion-sample"
    assert splits.source == str(SAMPLE_DIR.resolve())
    assert len(splits.train) >= 1500 and len(splits.validation) >= 200 and len(splits.test) >= 200
    assert splits.label_names == STUDY_LABELS
    every_text = pd.concat([splits.split(s)["text"] for s in SPLITS])
    assert every_text.is_unique
    counts = splits.train["label"].map(dict(enumerate(STUDY_LABELS))).value_counts()
    assert set(counts.index[:2]) == {"joy", "sadness"}
    assert counts.index[-1] == "surprise"
    words = every_text.str.split().str.len().mean()
    assert 15 <= words <= 23

    vectorizer = TfidfVectorizer()
    with threadpool_limits(1):  # BLAS threads oversubscribe small CPUs and make this fit 100x slower
        model = LogisticRegression(max_iter=1000).fit(
            vectorizer.fit_transform(splits.train["text"]), splits.train["label"]
        )
    accuracy = (model.predict(vectorizer.transform(splits.validation["text"])) == splits.validation["label"]).mean()
    majority = (splits.validation["label"] == splits.train["label"].mode()[0]).mean()
    assert accuracy >= majority + 0.15


def test_an_unreadable_file_is_one_sentence(tmp_path, monkeypatch):
    path = tmp_path / "in.csv"
    path.write_text("text\nhello\n")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the OS answer as it does for another user

        def denied(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UserError, match=r"Cannot read '.*in.csv': permission denied for this user; grant read access"):
        read_texts(path)


def test_a_folder_as_input_is_one_sentence(tmp_path):
    (tmp_path / "in.csv").mkdir()
    with pytest.raises(UserError, match=r"Input '.*in.csv' is a folder; pass one file of texts"):
        read_texts(tmp_path / "in.csv")
