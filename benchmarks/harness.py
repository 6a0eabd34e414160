"""What the benchmarks share: their common options, a throw-away store, a model to measure, texts, logging.

Without ``--model-uri`` the benchmarks fine-tune the encoder briefly (inference speed does not
depend on how well it learned) into a throw-away MLflow store, unless ``--track`` asks for the
current store, where the result is also logged as a run of the ``benchmarks`` experiment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from emotion_exp.config import DEFAULT_MODEL

EXPERIMENT = "benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-uri", help="Measure this pyfunc model (default: fine-tune --model briefly).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Encoder to fine-tune when no --model-uri is given.")
    parser.add_argument("--quick", action="store_true", help="Fewer texts and repeats: a smoke run in about a minute.")
    parser.add_argument("--track", action="store_true", help="Use the current MLflow store and log the results there.")


@contextlib.contextmanager
def store(track: bool, *, model_uri: str | None = None) -> Iterator[Path]:
    """A working folder; a throw-away sqlite store in it unless ``track`` or ``model_uri`` needs the current one."""
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as folder:
        if not track and not model_uri:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        yield Path(folder)


def model_uri(args: argparse.Namespace, workdir: Path) -> str:
    """``--model-uri``, or the model of a one-epoch fine-tune of ``--model`` on 200 rows of the sample."""
    if args.model_uri:
        return args.model_uri
    from emotion_exp.config import FinetuneConfig
    from emotion_exp.stages import finetune

    run_id = finetune.run(
        FinetuneConfig(
            model=args.model,
            epochs=1,
            max_samples=200,
            registered_model="",
            umap_max_points=200,
            output_dir=str(workdir / "checkpoints"),
        )
    )
    return f"runs:/{run_id}/finetune"


def sample(count: int, seed: int = 0) -> pd.DataFrame:
    """``count`` rows (text, label) drawn with replacement from all splits of the bundled sample.

    Realistic lengths, offline.
    """
    from emotion_exp import data
    from emotion_exp.config import DataConfig

    splits = data.load_splits(DataConfig())
    pool = pd.concat([splits.split(name) for name in ("train", "validation", "test")], ignore_index=True)
    return pool.sample(n=count, replace=True, random_state=seed).reset_index(drop=True)


def classifier_folder(uri: str) -> Path:
    """The ``save_pretrained`` folder inside a TransformerClassifier pyfunc model."""
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(uri))
    artifacts = Model.load(local).flavors["python_function"]["artifacts"]
    return local / artifacts["classifier"]["path"]


def share_of_peak(uri: str, texts: list[str], rates: dict[str, float], *, batch_size: int) -> str:
    """One line: each of ``rates`` (texts/s of the encoder model at ``uri``) as GFLOP/s and share of
    the all-core matmul peak in the precision ``auto`` picks here (the model picks its own threads)."""
    from transformers import AutoConfig, AutoTokenizer

    from benchmarks import peak
    from emotion_exp import models, threads

    folder = classifier_folder(uri)
    per_text = peak.flops_per_text(
        AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder), texts, batch_size=batch_size
    )
    cores = threads.available_cores()
    machine_peak, precision = peak.matmul_peak(cores), models.resolve_precision("auto")
    cells = "; ".join(
        f"{name} {peak.achieved(rate, per_text, machine_peak, precision, cores)}" for name, rate in rates.items()
    )
    return f"matmul peak GFLOP/s: {peak.describe(machine_peak)}; {precision}: {cells}"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def log(name: str, params: dict[str, object], metrics: dict[str, float]) -> None:
    """Record a benchmark as a run of the ``benchmarks`` experiment of the current store."""
    import mlflow

    with mlflow.start_run(run_name=name):
        mlflow.set_tag("benchmark", name)
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
