"""The predict stage: label the texts of a file with a registered model (default: the champion)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from emotion_exp import console, data, engine, pyfunc, registry, tracking
from emotion_exp import texts as text_rule
from emotion_exp.config import PredictConfig
from emotion_exp.errors import UserError

OUTPUT_SUFFIXES = (".csv", ".parquet")
# Texts per call of the model: it sorts each call's texts by length before batching, so large calls
# pad least and pay its per-call overhead rarely; the progress bar moves once per call.
TEXTS_PER_CALL = 4096


def output_path(config: PredictConfig) -> Path:
    """Where predictions go: ``--output``, or the input's name with ``.predictions.csv``.

    Refused before any work: another format, a folder, a symbolic link (never followed), the input
    itself under any name (a hard link: same device and inode), and an existing file unless
    ``--overwrite``.
    """
    source = Path(config.input).expanduser()
    target = Path(config.output).expanduser() if config.output else source.with_name(f"{source.stem}.predictions.csv")
    shown = config.output or str(target)
    if target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--output must end in .csv or .parquet; got {config.output!r}.")
    if target.is_symlink():
        raise UserError(
            f"--output {shown!r} is a symbolic link; predict does not write through links: pass the real path."
        )
    if target.is_dir():
        raise UserError(f"--output {shown!r} is a folder; pass a file name ending in .csv or .parquet.")
    if target.exists() and source.exists() and os.path.samefile(target, source):
        raise UserError(f"--output {shown!r} is the input file; predict never overwrites its input: pick another name.")
    if target.exists() and not config.overwrite:
        raise UserError(f"--output {shown!r} already exists; pass --overwrite to replace it, or pick another name.")
    return target


def run(config: PredictConfig) -> str:
    """Predict every text of ``config.input`` in batches, write input columns + label + probabilities.

    The run logs the params, the rows and throughput, and the predictions file as an artifact.
    Empty texts are refused unless ``config.skip_empty``, which gives them an empty label and
    empty probabilities.
    """
    model_config = engine.loading_config(config.runtime, config.precision)  # an impossible pair fails first
    if config.engine == "spark":
        return _run_on_spark(config)
    target = output_path(config)
    texts = data.read_texts(config.input, config.text_column, skip_empty=config.skip_empty)
    loaded = registry.load_model(config.model_uri, model_config)
    # Only our encoder models take --threads, --runtime and --batch_size; any other predicts as it was logged.
    python_model = pyfunc.python_model_of(loaded.model)
    if hasattr(python_model, "set_threads"):  # the encoder models; TF-IDF runs no torch
        python_model.set_threads(config.threads)
        python_model.batch_size = config.batch_size
    with tracking.stage_run("predict", config) as predict_run:
        mlflow.set_tags(loaded.source | pyfunc.engine_tags(loaded.model))  # the version an alias pointed to
        start = time.perf_counter()
        values = texts[_text_column(config)]
        keep = ~values.map(text_rule.blank).to_numpy(dtype=bool)
        predictions = predict_batches(loaded.model, values[keep].tolist(), TEXTS_PER_CALL)
        seconds = time.perf_counter() - start
        frame = _joined(texts, pyfunc.with_skipped_rows(predictions, keep))
        write_atomically(frame, target)
        mlflow.log_metrics(
            {
                "rows": len(frame),
                "skipped_empty": int((~keep).sum()),
                "texts_per_second": keep.sum() / max(seconds, 1e-9),
            }
        )
        if hasattr(python_model, "threads_used"):
            mlflow.set_tags({"threads_used": str(python_model.threads_used)})
        mlflow.log_artifact(str(target), "predictions")
        print(f"predict: wrote {len(frame):,} predictions to {target}.")
        return predict_run.info.run_id


def write_atomically(frame: pd.DataFrame, target: Path) -> None:
    """Write ``frame`` (CSV or Parquet by suffix) to a temporary file beside ``target``, then rename it into place.

    A kill while writing leaves any existing file whole and at most a stray ``.<name>.*.tmp``.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise UserError(
            f"Cannot write predictions into '{target.parent}' ({error.strerror}); pick another --output."
        ) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            if target.suffix.lower() == ".parquet":
                frame.to_parquet(stream, index=False)
            else:
                frame.to_csv(stream, index=False)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's mode
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _run_on_spark(config: PredictConfig) -> str:
    """Read, check, score and write with Spark (``emotion_exp.spark``); the run logs rows, throughput and the folder.

    ``--overwrite`` and ``--skip_empty`` mean what they mean locally; the model is the version an
    alias pointed to when this started, recorded as the local engine records it.
    """
    from emotion_exp import spark

    target = spark.output_folder(config.input, config.output, config.overwrite)
    with spark.session(config.spark_master) as session:
        texts, total = spark.read_counted_texts(session, config.input, config.text_column, skip_empty=config.skip_empty)
        model_uri, source = registry.resolve(config.model_uri)
        with tracking.stage_run("predict", config) as predict_run:
            # Each Spark worker resolves the runtime where it loads the model: the tag says what was asked.
            mlflow.set_tags(source | {"runtime": config.runtime, "runtime_reason": "each worker resolves it"})
            start = time.perf_counter()
            scored = spark.score(
                texts,
                model_uri,
                _text_column(config),
                skip_empty=config.skip_empty,
                runtime=config.runtime,
                precision=config.precision,
            )
            with spark.scoring_progress(session, total, texts.rdd.getNumPartitions()):
                rows = spark.write_parquet(scored, target)
            seconds = time.perf_counter() - start
            mlflow.log_metrics({"rows": rows, "texts_per_second": rows / max(seconds, 1e-9)})
            mlflow.set_tag("predictions_path", str(target.resolve()))
            print(f"predict: wrote {rows:,} predictions to {target}.")
            return predict_run.info.run_id


def _text_column(config: PredictConfig) -> str:
    return "text" if Path(config.input).suffix.lower() == ".txt" else config.text_column


def predict_batches(model: Any, texts: list[str], batch_size: int, stage: str = "predict") -> pd.DataFrame:
    """The pyfunc model's predictions for ``texts``, ``batch_size`` at a time, with a progress bar named ``stage``."""
    if not texts:  # every text was empty and skipped: the model still gives the columns
        return model.predict(pd.DataFrame({"text": pd.Series([], dtype=object)}))
    parts = []
    with console.progress(len(texts), stage) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            parts.append(model.predict(pd.DataFrame({"text": batch})))
            bar.update(len(batch))
    return pd.concat(parts, ignore_index=True)


def _joined(texts: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Input columns then predictions; an input column named like an output keeps its data as ``<name>_input``.

    (``<name>_input_2`` and so on where that name is taken too), so no two columns share a name.
    """
    taken = set(texts.columns) | set(predictions.columns)
    renames = {}
    for column in [c for c in texts.columns if c in predictions.columns]:
        new, number = f"{column}_input", 1
        while new in taken:
            number += 1
            new = f"{column}_input_{number}"
        renames[column] = new
        taken.add(new)
    return pd.concat([texts.rename(columns=renames).reset_index(drop=True), predictions], axis=1)
