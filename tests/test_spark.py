"""predict --engine spark: the same predictions, columns and errors as the local engine, on a real local[2] Spark."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from emotion_exp.cli import cli
from emotion_exp.config import PredictConfig
from emotion_exp.errors import UserError
from emotion_exp.stages import predict
from tests.conftest import REPO_ROOT
from tests.pyfunc_models import LABELS, log_keyword_model

PROBABILITIES = [f"prob_{label}" for label in LABELS]


def test_without_pyspark_the_spark_engine_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    source = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["so happy"]}).to_csv(source, index=False)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)

    result = CliRunner().invoke(cli, ["predict", "--input", str(source), "--engine", "spark"])

    assert result.exit_code != 0
    assert "pip install 'emotion-exp[spark]'" in result.output
    assert not (tmp_path / "texts.predictions.parquet").exists()


@pytest.fixture(scope="module")
def spark(tmp_path_factory) -> Iterator[object]:
    """One local[2] session for the module; its Python workers run this interpreter and import ``tests``."""
    pytest.importorskip("pyspark", reason="pyspark is not installed: pip install -e '.[spark]'")
    from pyspark.sql import SparkSession

    saved = {name: os.environ.get(name) for name in ("PYSPARK_PYTHON", "SPARK_LOCAL_IP", "PYTHONPATH")}
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    # The test models are pickled by reference to tests.pyfunc_models: the workers must find it.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), saved["PYTHONPATH"]]))
    session = (
        SparkSession.builder.master("local[2]")
        .appName("emotion-exp-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.local.dir", str(tmp_path_factory.mktemp("spark-local")))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def texts() -> pd.DataFrame:
    """5,000 texts of the bundled sample (repeated), with an id and a ``label`` column that clashes."""
    sample = pd.concat(pd.read_csv(REPO_ROOT / "emotion_exp" / "sample" / f"{s}.csv") for s in ("train", "test"))
    pool = sample["text"].tolist()
    return pd.DataFrame({"id": range(5000), "text": [pool[i % len(pool)] for i in range(5000)], "label": "?"})


@pytest.fixture(scope="module")
def models(
    tracking_uri: str, registered_tfidf: tuple[str, str], tiny_model_dir: Path, tmp_path_factory
) -> dict[str, str]:
    """The session's registered TF-IDF model, a tiny transformer classifier (fp32) and the keyword models."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from emotion_exp import pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"spark-setup-{uuid.uuid4().hex[:8]}")
    name, _ = registered_tfidf

    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # A few hundred steps of plain training: random weights give every text almost the same
    # features, so float noise would be amplified and the labels would not vary.
    sample = pd.read_csv(REPO_ROOT / "emotion_exp" / "sample" / "train.csv").sample(960, random_state=0)
    labels = torch.tensor(sample["label"].map({n: i for i, n in enumerate(LABELS)}).to_numpy())
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    for start in range(0, len(sample), 32):
        batch = tokenizer(
            sample["text"].iloc[start : start + 32].tolist(),
            padding=True,
            truncation=True,
            max_length=32,
            return_tensors="pt",
        )
        classifier(**batch, labels=labels[start : start + 32]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("tiny-classifier")
    classifier.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with mlflow.start_run():
        transformer = pyfunc.log_model(
            pyfunc.TransformerClassifier(max_length=32, precision="fp32"),
            LABELS,
            artifacts={pyfunc.TransformerClassifier.ARTIFACT: str(folder)},
            packages=("torch", "transformers"),
        )
        keyword = log_keyword_model(input_example=False)
        failing = log_keyword_model(input_example=False, failing=True)
    return {"tfidf": f"models:/{name}/1", "transformer": transformer, "keyword": keyword, "failing": failing}


def both_engines(source: Path, tmp_path: Path, model_uri: str, **options: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The local engine's Parquet file and the Spark engine's Parquet folder, read back by pandas."""
    predict.run(
        PredictConfig(input=str(source), output=str(tmp_path / "local.parquet"), model_uri=model_uri, **options)
    )
    predict.run(
        PredictConfig(input=str(source), output=str(tmp_path / "spark"), model_uri=model_uri, engine="spark", **options)
    )
    return pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "spark")


def assert_same_predictions(local: pd.DataFrame, distributed: pd.DataFrame) -> None:
    assert list(distributed.columns) == list(local.columns)
    assert distributed["text"].tolist() == local["text"].tolist()  # same rows, same order
    assert distributed["label"].tolist() == local["label"].tolist()
    np.testing.assert_allclose(
        distributed[PROBABILITIES].to_numpy(), local[PROBABILITIES].to_numpy(), rtol=0, atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tfidf", "transformer"])
def test_5000_texts_score_as_the_local_engine_does(spark, models, texts, model, tmp_path, isolated_mlflow) -> None:
    source = tmp_path / "texts.parquet"
    texts.to_parquet(source)

    local, distributed = both_engines(source, tmp_path, models[model])

    assert list(local.columns) == ["id", "text", "label_input", "label", *PROBABILITIES]
    assert len(distributed) == 5000 and distributed["id"].tolist() == list(range(5000))
    assert_same_predictions(local, distributed)
    # Ten times the tolerance at least: a model that said the same for every text would prove little.
    assert local[PROBABILITIES].to_numpy().std(axis=0).max() > 1e-4
    runs = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    [spark_run] = [r for r in runs if r.data.params["engine"] == "spark"]
    assert spark_run.info.status == "FINISHED" and spark_run.data.metrics["rows"] == 5000
    assert spark_run.data.tags["predictions_path"] == str((tmp_path / "spark").resolve())


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
def test_every_text_format_reads_as_the_local_engine_reads_it(spark, models, texts, suffix, tmp_path) -> None:
    frame = texts.head(300).assign(text=lambda df: df["text"].str.replace("\t", " "))
    source = tmp_path / f"texts{suffix}"
    if suffix == ".csv":
        frame.to_csv(source, index=False)
    elif suffix == ".tsv":
        frame.to_csv(source, index=False, sep="\t")
    elif suffix == ".jsonl":
        source.write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict("records")))
    else:
        source.write_text("\n\n".join(frame["text"]) + "\n")  # blank lines are skipped by both

    local, distributed = both_engines(source, tmp_path, models["keyword"])

    assert len(local) == 300
    assert_same_predictions(local, distributed)


@pytest.mark.slow
def test_a_folder_of_parquet_parts_and_the_library_function(spark, models, texts, tmp_path) -> None:
    from emotion_exp import spark as spark_engine

    folder = tmp_path / "parts"
    spark.createDataFrame(texts.head(1000)).repartition(3).write.parquet(str(folder))
    target = tmp_path / "scored"

    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--input",
            str(folder),
            "--output",
            str(target),
            "--engine",
            "spark",
            "--model_uri",
            models["keyword"],
        ],
    )

    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(target)
    assert sorted(scored["id"]) == list(range(1000))
    direct = spark_engine.score(spark.read.parquet(str(folder)), models["keyword"]).toPandas()
    assert list(direct.columns) == list(scored.columns) == ["id", "text", "label_input", "label", *PROBABILITIES]
    assert (scored["label"] == np.where(scored["text"].str.contains("happy"), "joy", scored["label"])).all()


BAD_INPUTS = {
    "missing column": pd.DataFrame({"body": ["so happy", "sad"]}),
    "null texts": pd.DataFrame({"text": ["so happy", None, "fine", None]}),
    "empty texts": pd.DataFrame({"text": ["so happy", "", "  ", "fine"] * 3}),
    "texts that show nothing": pd.DataFrame({"text": ["so happy", "\u200b\u200f", "fine", " \u2066\u2069"] * 3}),
    "numbers": pd.DataFrame({"text": [1, 2, 3]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_with_the_local_engines_message_and_writes_nothing(spark, models, case, tmp_path) -> None:
    source = tmp_path / "bad.parquet"
    BAD_INPUTS[case].to_parquet(source)
    errors = []
    for engine, output in (("local", "local.parquet"), ("spark", "out")):
        with pytest.raises(UserError) as raised:
            predict.run(
                PredictConfig(
                    input=str(source), output=str(tmp_path / output), model_uri=models["keyword"], engine=engine
                )
            )
        errors.append(str(raised.value))

    assert errors[1] == errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


@pytest.mark.slow
def test_a_job_that_fails_half_way_leaves_nothing_at_output(spark, models, texts, tmp_path, isolated_mlflow) -> None:
    source = tmp_path / "texts.parquet"
    texts.head(400).assign(text=lambda df: df["text"].where(df.index != 350, "boom")).to_parquet(source)

    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out"),
            "--engine",
            "spark",
            "--model_uri",
            models["failing"],
        ],
    )

    assert result.exit_code != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.parquet"]
    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.info.status == "FAILED"


def test_an_existing_output_is_refused_before_spark_starts(tmp_path) -> None:
    source = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["so happy"]}).to_csv(source, index=False)
    (tmp_path / "out").mkdir()

    with pytest.raises(UserError, match="already exists"):
        predict.run(
            PredictConfig(input=str(source), output=str(tmp_path / "out"), model_uri="runs:/none/model", engine="spark")
        )


@pytest.mark.slow
def test_lines_that_are_not_json_objects_are_refused_by_both_engines(spark, models, tmp_path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "so happy"}\nnot json\n{"text": "fine"}\n')
    for engine, output in (("local", "local.parquet"), ("spark", "out")):
        config = PredictConfig(
            input=str(source), output=str(tmp_path / output), model_uri=models["keyword"], engine=engine
        )
        with pytest.raises(UserError, match=f"Could not parse '{source}'.*expected JSON Lines, one object per line"):
            predict.run(config)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


BAD_TEXT_FILES = {
    "csv-empty-and-blank": ("bad.csv", 'id,text\n1,so happy\n2,""\n\n3,"two\nlines"\n4,"   "\n'),
    "jsonl-null-and-lone-surrogate": (
        "bad.jsonl",
        '{"text": "fine"}\n{"text": null}\n\n{"text": "\\ud800"}\n{"text": ""}\n',
    ),
    "text-over-max-chars-csv": ("bad.csv", f"text\nfine\n{'x' * 100_001}\n"),
    # Spark read these as the texts "5", "true", "[1]"... beside a string; the local engine refuses them.
    "jsonl-number-boolean-list-object": (
        "bad.jsonl",
        '{"text": "fine"}\n{"text": 5}\n{"text": true}\n{"text": [1]}\n{"text": {"a": 1}}\n',
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("skip_empty", [False, True])
@pytest.mark.parametrize("case", BAD_TEXT_FILES)
def test_bad_texts_in_a_file_get_the_local_engines_message_with_its_line_numbers(
    spark, models, case, skip_empty, tmp_path
) -> None:
    name, content = BAD_TEXT_FILES[case]
    source = tmp_path / name
    source.write_text(content)
    errors = []
    for engine, output in (("local", "local.parquet"), ("spark", "out")):
        config = PredictConfig(
            input=str(source),
            output=str(tmp_path / output),
            model_uri=models["keyword"],
            engine=engine,
            skip_empty=skip_empty,
        )
        if skip_empty and case.startswith("csv"):  # only empty texts: both engines label them
            predict.run(config)
            continue
        with pytest.raises(UserError) as raised:
            predict.run(config)
        errors.append(str(raised.value))

    if errors:
        assert errors[1] == errors[0]
        assert "line" in errors[0]
    else:
        local, distributed = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "out")
        assert distributed["label"].tolist() == local["label"].tolist()
        assert [label == "" for label in local["label"]] == [False, True, False, True]
        assert distributed[PROBABILITIES].isna().to_numpy().tolist() == local[PROBABILITIES].isna().to_numpy().tolist()


@pytest.mark.slow
def test_a_corrupt_part_in_a_parquet_folder_is_named_in_one_sentence(spark, models, texts, tmp_path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    texts.head(10).to_parquet(folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1 this is no parquet file")
    config = PredictConfig(input=str(folder), output=str(tmp_path / "out"), model_uri=models["keyword"], engine="spark")

    with pytest.raises(UserError) as raised:
        predict.run(config)

    message = str(raised.value)
    assert f"'{folder / 'part-1.parquet'}' is not a readable Parquet file" in message
    assert "\n" not in message and "remove it from the folder" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_overwrite_replaces_a_spark_output_folder_and_only_that(spark, models, texts, tmp_path) -> None:
    source = tmp_path / "texts.parquet"
    texts.head(40).to_parquet(source)
    config = PredictConfig(input=str(source), output=str(tmp_path / "out"), model_uri=models["keyword"], engine="spark")
    predict.run(config)
    texts.head(10).to_parquet(source)

    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        predict.run(config)
    predict.run(dataclasses.replace(config, overwrite=True))

    assert len(pd.read_parquet(tmp_path / "out")) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "texts.parquet"]


def test_overwrite_never_replaces_a_folder_spark_did_not_write(tmp_path) -> None:
    source = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["so happy"]}).to_csv(source, index=False)
    (tmp_path / "photos").mkdir()

    with pytest.raises(UserError, match="not a Parquet folder written by Spark"):
        predict.run(
            PredictConfig(
                input=str(source),
                output=str(tmp_path / "photos"),
                model_uri="runs:/none/model",
                engine="spark",
                overwrite=True,
            )
        )
    assert (tmp_path / "photos").is_dir()


@pytest.mark.slow
def test_the_spark_engine_prints_its_own_lines_and_the_jvms_incubator_notice(
    models, texts, tracking_uri, tmp_path
) -> None:
    # A fresh process, as a user runs it: no log4j profile lines, no [Stage 7:> (0 + 2) / 2] bars, no pandas
    # FutureWarnings, no NativeCodeLoader WARN, no env_manager advice, no type-hint advice from the workers.
    source = tmp_path / "texts.parquet"
    texts.head(300).to_parquet(source)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("EMOTION_EXP_VERBOSE", None)
    command = [sys.executable, "-m", "emotion_exp", "predict", "--engine", "spark", "--input", str(source)]
    command += ["--output", str(tmp_path / "out"), "--model_uri", models["keyword"]]

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.splitlines()[0].startswith("predict: wrote 300 predictions to")
    # The project's progress, and the one line of the JVM's that only PySpark's private gateway could hide.
    lines = finished.stderr.splitlines()
    others = [line for line in lines if not line.startswith("predict: ")]
    assert others == ["WARNING: Using incubator modules: jdk.incubator.vector"], lines
    assert "(300/300 texts, " in lines[-1]


@pytest.mark.slow
def test_scoring_reports_rows_of_the_total_task_by_task(spark, models, texts, tmp_path, capfd, monkeypatch) -> None:
    from emotion_exp import spark as engine

    # Polled often: the keyword model's tasks can all finish within one 0.5 s poll on a busy machine (CI).
    monkeypatch.setattr(engine, "POLL_S", 0.01)

    source = tmp_path / "texts.parquet"
    texts.to_parquet(source)
    frame, rows = engine.read_counted_texts(spark, source)
    partitions = frame.rdd.getNumPartitions()
    assert rows == 5000 and partitions == 5  # about ROWS_PER_TASK rows a task
    capfd.readouterr()

    with engine.scoring_progress(spark, rows, partitions):
        engine.write_parquet(engine.score(frame, models["keyword"]), tmp_path / "out")

    lines = capfd.readouterr().err.splitlines()
    assert lines[-1].startswith("predict: 100% (5,000/5,000 texts, "), lines
    assert any("(1,000/5,000 texts" in line or "(2,000/5,000 texts" in line for line in lines), lines
