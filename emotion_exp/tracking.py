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
import functools
import os
import socket
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import mlflow
from mlflow.tracking import MlflowClient

from emotion_exp import __version__

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import TrainerCallback

    from emotion_exp.data import DatasetSplits
    from emotion_exp.metrics import Evaluation
    from emotion_exp.models import ResolvedModel

T = TypeVar("T")
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
    if not nested:
        # Two stages started at once with a new MLFLOW_EXPERIMENT_NAME both try to create it.
        retry_on_conflict(current_experiment_id)
    # The run is created with its host and pid, so clean-stale never sees it RUNNING without them.
    tags = {"stage": stage, "host": socket.gethostname(), "pid": str(os.getpid()), "emotion_exp_version": __version__}
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else stage, nested=nested, tags=tags)
    try:
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
        with warnings.catch_warnings():
            # MLflow warns that a local path matches two source types and that integer labels
            # cannot hold missing values; neither applies to a finished, validated split.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                frame,
                source=splits.source,
                targets="label",
                name=f"{splits.name}-{split}",
                digest=splits.digest[:16],
            )
        retry_on_conflict(functools.partial(mlflow.log_input, dataset, context=split))
    mlflow.set_tags({"dataset_digest": splits.digest, "dataset_name": splits.name})
    log_params({"dataset_source": splits.source, "label_names": ",".join(splits.label_names)})
    log_metrics({f"{SPLIT_PREFIX[s]}_rows": len(splits.split(s)) for s in ("train", "validation", "test")})


def retry_on_conflict(call: Callable[[], T], attempts: int = 3) -> T:
    """Run ``call``; run it again when a concurrent writer broke a unique key of the SQL store.

    MLflow's SQL store writes several things as a look-up followed by an insert (an experiment,
    a dataset input, a model alias): two processes doing the same at once both miss the row and the
    second insert fails. Its transaction is rolled back, and the retry finds the row the other
    process wrote and updates or links to it.
    """
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import IntegrityError

    for _ in range(attempts - 1):
        try:
            return call()
        except MlflowException as error:
            conflict = error.error_code == "RESOURCE_ALREADY_EXISTS" or isinstance(error.__cause__, IntegrityError)
            if not conflict:
                raise
    return call()


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


def current_experiment_id() -> str:
    """The experiment new runs go to (``MLFLOW_EXPERIMENT_NAME``/``_ID`` or MLflow's default)."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(MlflowClient().get_run(run_id).data.metrics)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a stage needs to know about an existing run (to resume it, for instance)."""

    run_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]


def tracking_uri() -> str:
    """The store runs are logged to, for messages."""
    return mlflow.get_tracking_uri()


def launcher_run_id() -> str | None:
    """The run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``), if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def find_run(run_id: str) -> RunRecord | None:
    """The run with this id in the current store, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return RunRecord(run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.params))


def running_runs(experiment_id: str) -> list[RunRecord]:
    """Every run of the experiment whose status is RUNNING (for ``clean-stale``)."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    return [RunRecord(r.info.run_id, r.info.status, dict(r.data.tags), dict(r.data.params)) for r in runs]


def experiment_name(experiment_id: str) -> str:
    """An experiment's name, for messages."""
    return MlflowClient().get_experiment(experiment_id).name


# The Trainer's log keys and the metric names they are logged under.
TRAINER_METRICS = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "eval_accuracy": "eval_accuracy",
    "eval_f1_weighted": "eval_f1_weighted",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
}


def trainer_callback(run_id: str) -> TrainerCallback:
    """A Trainer callback that logs training loss and per-epoch evaluation into ``run_id``.

    Metrics go to the run by id with the Trainer's global step, so nothing here can start a
    run (transformers' own MLflow callback opens stray runs; ``report_to="none"`` keeps it off),
    and only the main process logs, so the same code can run under ``torchrun``. The Trainer's
    closing summary (its ``train_loss`` is an average) is left out: the stage logs throughput.
    """
    return _trainer_callback_class()(run_id)


@functools.cache
def _trainer_callback_class() -> type:
    from transformers import TrainerCallback

    class MlflowMetricsCallback(TrainerCallback):
        def __init__(self, run_id: str) -> None:
            self.run_id = run_id

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return
            metrics = {
                TRAINER_METRICS[key]: float(value)
                for key, value in logs.items()
                if key in TRAINER_METRICS and isinstance(value, (int, float))
            }
            if metrics:
                mlflow.log_metrics(metrics, step=state.global_step, run_id=self.run_id)

    return MlflowMetricsCallback


# Extracted features: logged by the extract stage, found again by (dataset digest, feature key).
FEATURES_ARTIFACT = "features/features.npz"
FEATURE_KEY_PREFIX = "features_"


def set_feature_key(key: Mapping[str, str], features_run_id: str | None = None) -> None:
    """Tag the active extract run with what its features depend on (and where they are stored)."""
    tags = {f"{FEATURE_KEY_PREFIX}{name}": value for name, value in key.items()}
    if features_run_id:
        tags["features_run_id"] = features_run_id
    set_tags(tags)


def find_extract_run(dataset_digest: str, key: Mapping[str, str]) -> str | None:
    """The run holding the features of the newest FINISHED extract run of this dataset and key.

    Searches the current experiment. The key (model, pooling, max_length, resolved precision)
    is compared in Python, so no value has to survive quoting in a filter string; an extract run
    that itself reused features points at the run that holds them (``features_run_id`` tag).
    """
    runs = MlflowClient().search_runs(
        [current_experiment_id()],
        filter_string=(
            f"tags.stage = 'extract' and tags.dataset_digest = '{dataset_digest}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    for run in runs:
        tags = run.data.tags
        if "features_run_id" in tags and _key_differences(tags, key) == []:
            return tags["features_run_id"]
    return None


def check_extract_run(run_id: str, dataset_digest: str, key: Mapping[str, str]) -> str:
    """Validate ``--features_run_id``; return the run that holds its features.

    The run must exist, be a FINISHED extract run of the same dataset, and have made its
    features the same way (model, pooling, max_length, resolved precision) as this stage would.
    """
    from emotion_exp.errors import UserError

    record = find_run(run_id)
    if record is None:
        raise UserError(
            f"--features_run_id {run_id}: there is no such run in the tracking store {tracking_uri()}; "
            "pass the id of a finished extract run, or leave it empty to find or extract the features."
        )
    if record.tags.get("stage") != "extract" or record.status != "FINISHED" or "features_run_id" not in record.tags:
        raise UserError(
            f"--features_run_id {run_id} is a {record.status} {record.tags.get('stage', 'untagged')!r} run, not a "
            "finished extract run; pass the id of one (emotion-exp extract makes one), or leave it empty."
        )
    found = record.tags.get("dataset_digest", "")
    if found != dataset_digest:
        raise UserError(
            f"--features_run_id {run_id} holds features of another dataset ({record.tags.get('dataset_name', '?')}, "
            f"digest {found[:12]}) than this run's ({dataset_digest[:12]}); pass an extract run of the same data "
            "(same dataset, max_samples, seed and fractions), or leave it empty."
        )
    differences = _key_differences(record.tags, key)
    if differences:
        raise UserError(
            f"--features_run_id {run_id} made its features with {', '.join(differences)}; pass the same "
            "values to this stage, or leave --features_run_id empty to find or extract matching features."
        )
    return record.tags["features_run_id"]


def _key_differences(tags: Mapping[str, str], key: Mapping[str, str]) -> list[str]:
    """``name=<theirs> (not <ours>)`` for each key field where a run's tags differ from ``key``."""
    return [
        f"{name}={tags.get(FEATURE_KEY_PREFIX + name)} (not {value})"
        for name, value in key.items()
        if tags.get(FEATURE_KEY_PREFIX + name) != value
    ]


def download_artifact(run_id: str, artifact_path: str, dst_path: str) -> str:
    """Download one artifact of a run into ``dst_path``; return its local path."""
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst_path)


def log_model_source(resolved: ResolvedModel, precision: str | None = None) -> None:
    """Record which weights a run really used, the precision they ran in, and the CPU."""
    from emotion_exp.models import cpu_description

    params = {"model_location": resolved.location, "model_source": resolved.source}
    if precision is not None:
        params["resolved_precision"] = precision
    log_params(params)
    set_tags({"cpu": cpu_description()})
