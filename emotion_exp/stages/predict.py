"""The predict stage: label the texts of a file with a registered model (default: the champion)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from emotion_exp import data, pyfunc, registry, tracking
from emotion_exp.config import PredictConfig
from emotion_exp.errors import UserError

OUTPUT_SUFFIXES = (".csv", ".parquet")
# Texts per call of the model: it sorts each call's texts by length before batching, so large calls
# pad least and pay its per-call overhead rarely; the progress bar moves once per call.
TEXTS_PER_CALL = 4096


def output_path(config: PredictConfig) -> Path:
    """Where predictions go: ``--output``, or the input's name with ``.predictions.csv``; never the input."""
    source = Path(config.input).expanduser()
    target = Path(config.output).expanduser() if config.output else source.with_name(f"{source.stem}.predictions.csv")
    if target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--output must end in .csv or .parquet; got {config.output!r}.")
    if target.resolve() == source.resolve():
        raise UserError(
            f"--output {config.output!r} is the input file; predict never overwrites its input: pick another name."
        )
    return target


def run(config: PredictConfig) -> str:
    """Predict every text of ``config.input`` in batches, write input columns + label + probabilities.

    The run logs the params, the rows and throughput, and the predictions file as an artifact.
    """
    target = output_path(config)
    texts = data.read_texts(config.input, config.text_column)
    model = registry.load_model(config.model_uri)
    # Only our encoder models take --threads and --batch_size; any other model predicts as it was logged.
    python_model = pyfunc.python_model_of(model)
    if hasattr(python_model, "set_threads"):  # the encoder models; TF-IDF runs no torch
        python_model.set_threads(config.threads)
        python_model.batch_size = config.batch_size
    with tracking.stage_run("predict", config) as predict_run:
        start = time.perf_counter()
        predictions = predict_batches(model, texts[_text_column(config)].tolist(), TEXTS_PER_CALL)
        seconds = time.perf_counter() - start
        frame = _joined(texts, predictions)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix.lower() == ".parquet":
            frame.to_parquet(target, index=False)
        else:
            frame.to_csv(target, index=False)
        mlflow.log_metrics({"rows": len(frame), "texts_per_second": len(frame) / max(seconds, 1e-9)})
        if hasattr(python_model, "chosen_threads"):
            mlflow.set_tags({"threads_chosen": ",".join(map(str, python_model.chosen_threads))})
        mlflow.log_artifact(str(target), "predictions")
        print(f"predict: wrote {len(frame)} predictions to {target}.")
        return predict_run.info.run_id


def _text_column(config: PredictConfig) -> str:
    return "text" if Path(config.input).suffix.lower() == ".txt" else config.text_column


def predict_batches(model: Any, texts: list[str], batch_size: int) -> pd.DataFrame:
    """The pyfunc model's predictions for ``texts``, ``batch_size`` at a time, with a progress bar."""
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(texts), desc="predict", unit="text", file=sys.stderr) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            parts.append(model.predict(pd.DataFrame({"text": batch})))
            bar.update(len(batch))
    return pd.concat(parts, ignore_index=True)


def _joined(texts: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Input columns then predictions; an input column named like an output keeps its data as ``<name>_input``."""
    clashes = {c: f"{c}_input" for c in texts.columns if c in predictions.columns}
    return pd.concat([texts.rename(columns=clashes).reset_index(drop=True), predictions], axis=1)
