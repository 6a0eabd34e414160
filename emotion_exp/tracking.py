"""The MLflow edge: runs, params, dataset inputs, metrics, figures and reports.

Stages call these functions and never import mlflow themselves. A stage runs inside
``stage_run``: under ``mlflow run`` it attaches to the launcher's run (``MLFLOW_RUN_ID``),
inside another run it opens a nested child, and from the CLI it opens its own run in the
current experiment. A failure ends the run FAILED (KILLED on Ctrl-C) with the reason as the
``error`` tag; everything logged before stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from emotion_exp import __version__

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emotion_exp.data import DatasetSplits
    from emotion_exp.metrics import Evaluation

SPLIT_PREFIX = {"train": "train", "validation": "val", "test": "test"}
MAX_TAG_LENGTH = 5000


@contextlib.contextmanager
def stage_run(stage: str, config: Any, *, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Run a stage inside an MLflow run tagged ``stage=<name>`` with its config as params.

    ``run_id`` re-opens an existing run (resuming an interrupted one). The run ends FINISHED
    on success, FAILED with the error on an exception and KILLED on Ctrl-C; the exception
    propagates either way.
    """
    nested = mlflow.active_run() is not None
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else stage, nested=nested)
    try:
        mlflow.set_tags({"stage": stage, "host": socket.gethostname(), "pid": str(os.getpid()),
                         "emotion_exp_version": __version__})
        log_params(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
        yield run
    except KeyboardInterrupt:
        _end(run, "KILLED", "interrupted by the user (Ctrl-C)")
        raise
    except BaseException as error:  # noqa: BLE001 - re-raised: the run records why it failed
        _end(run, "FAILED", str(error) or type(error).__name__)
        raise
    else:
        mlflow.end_run("FINISHED")


def _end(run: mlflow.ActiveRun, status: str, reason: str) -> None:
    client = MlflowClient()
    client.set_tag(run.info.run_id, "error", reason[:MAX_TAG_LENGTH])
    if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run.info.run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run.info.run_id, status)


def fail_run(run_id: str, reason: str) -> None:
    """Mark a run that is still RUNNING as FAILED with ``reason`` (errors before a stage began)."""
    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "error", reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, "FAILED")


def log_params(params: Mapping[str, Any]) -> None:
    """Log params, leaving alone any the run already has.

    ``mlflow run`` logs the entry point's parameters as the user typed them (``1e-4``), and a
    resumed run has them from its first attempt; MLflow refuses to change a param, and the
    value is the same, so those keys are skipped instead of failing.
    """
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {key: _param_value(value) for key, value in params.items() if key not in existing}
    if fresh:
        mlflow.log_params(fresh)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if text else '""'


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics at an optional step."""
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set string tags on the active run."""
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def log_dataset(splits: DatasetSplits) -> None:
    """Record the data: one MLflow dataset input per split, and the ``dataset_digest`` tag.

    MLflow's own dataset digest hashes only the first rows, so the tag carries our digest over
    every text, label and label name; runs are reused and compared by it.
    """
    import mlflow.data

    for split in ("train", "validation", "test"):
        frame = splits.split(split).assign(label_name=lambda df: df["label"].map(dict(enumerate(splits.label_names))))
        dataset = mlflow.data.from_pandas(
            frame,
            source=splits.source,
            targets="label",
            name=f"{splits.name}-{split}",
            digest=splits.digest[:16],
        )
        mlflow.log_input(dataset, context=split)
    mlflow.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
    log_params({"dataset_source": splits.source, "label_names": ",".join(splits.label_names)})
    log_metrics({f"{SPLIT_PREFIX[s]}_rows": len(splits.split(s)) for s in ("train", "validation", "test")})


def log_figure(figure: Figure, artifact_file: str) -> None:
    """Log a figure as a PNG artifact and free it."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_dict(data: Any, artifact_file: str) -> None:
    """Log JSON or YAML-serialisable data as an artifact."""
    mlflow.log_dict(data, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    """Log text (markdown, CSV) as an artifact."""
    mlflow.log_text(text, artifact_file)


def log_artifact(local_path: str, artifact_path: str | None = None) -> None:
    """Log a local file or folder as an artifact."""
    if os.path.isdir(local_path):
        mlflow.log_artifacts(local_path, artifact_path)
    else:
        mlflow.log_artifact(local_path, artifact_path)


def log_evaluation(split: str, evaluation: Evaluation, label_names: tuple[str, ...]) -> None:
    """Log a split's scores, its row-normalised confusion matrix and its classification report."""
    from emotion_exp import plots

    log_metrics(evaluation.metrics(SPLIT_PREFIX[split]))
    log_figure(
        plots.confusion_matrix(evaluation.confusion, label_names, title=f"Normalized Confusion Matrix ({split})"),
        f"plots/confusion_matrix_{split}.png",
    )
    log_dict(evaluation.report, f"reports/classification_report_{split}.json")


def active_run_id() -> str:
    """The id of the run a stage is logging into."""
    return mlflow.active_run().info.run_id


def current_experiment_id() -> str:
    """The experiment new runs go to (``MLFLOW_EXPERIMENT_NAME``/``_ID`` or MLflow's default)."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


def status_of(run_id: str) -> str:
    """A run's status name (``RUNNING``, ``FINISHED``, ...)."""
    return RunStatus.to_string(RunStatus.from_string(MlflowClient().get_run(run_id).info.status))


def to_json(data: Any) -> str:
    """Pretty JSON for artifacts people read."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(MlflowClient().get_run(run_id).data.metrics)
