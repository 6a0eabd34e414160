"""The run lifecycle: how a stage's MLflow run opens, ends, fails and is found again.

A stage runs inside ``stage_run``: under ``mlflow run`` it attaches to the launcher's run
(``MLFLOW_RUN_ID``), inside another run it opens a nested child, and from the CLI it opens its
own run in the current experiment. A failure ends the run FAILED (KILLED on Ctrl-C) with the
reason as the ``error`` tag; everything logged before stays. Each run records who owns it
(``owner_tags``: host, pid, boot id, process namespace and the process's start time), so
``process_state`` can tell a live run from one whose process died.

What a stage logs inside its run is the stage's own business (``emotion_exp/stages``, the
MLflow edge, calls mlflow directly); the shared opening and closing of model stages is
``emotion_exp/stages/skeleton.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
import psutil
from mlflow.tracking import MlflowClient

from emotion_exp import __version__, catalog, console, interrupts, significance, threads
from emotion_exp.errors import EndedEarly, UserError

T = TypeVar("T")
MAX_TAG_LENGTH = 5000


@dataclasses.dataclass
class RunLabels:
    """Extra params and tags a workflow gives the stage run it starts, and that run's id once it has one.

    A sweep's trial number, a learning-curve point's train size and a seedless stage's note are
    passed this way, explicitly, to the stage's ``run`` (``labels=``); ``stage_run`` records the
    run id here as soon as the run exists, so the caller has it also when the stage then fails.
    """

    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    run_id: str | None = None

    def __post_init__(self) -> None:
        self.tags = {key: str(value) for key, value in self.tags.items()}


@contextlib.contextmanager
def stage_run(
    stage: str, config: Any, *, run_id: str | None = None, labels: RunLabels | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Run a stage inside an MLflow run tagged ``stage=<name>`` with its config as params.

    ``run_id`` re-opens an existing run (resuming an interrupted one); ``labels`` adds a workflow's
    params and tags from the run's first moment and learns its id. The run ends FINISHED
    on success, FAILED with the error on an exception, KILLED on Ctrl-C and KILLED with the
    ``EndedEarly`` tags (``pruned``) when stopped on purpose; the exception propagates either way.
    """
    nested = mlflow.active_run() is not None
    # Two stages started at once with a new MLFLOW_EXPERIMENT_NAME both try to create it (a nested run: its parent's).
    experiment_id = retry_on_conflict(current_experiment_id)
    if not nested:
        require_edit(stage, experiment_id=experiment_id)
        retry_on_conflict(lambda: mark_experiment(experiment_id))  # and both tag it
    # The run is created with its owner's tags, so clean-stale never sees it RUNNING without them.
    tags = {"stage": stage, **owner_tags(), "emotion_exp_version": __version__}
    tags["omp_wait_policy"] = os.environ.get(threads.WAIT_POLICY, "default")  # timings depend on it
    if labels is not None:
        tags.update(labels.tags)
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=None if run_id else stage,
        nested=nested,
        tags=tags,
    )
    try:
        if labels is not None:
            labels.run_id = run.info.run_id
            log_params(labels.params)
        log_params(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
        yield run
        interrupts.raise_if_swallowed()  # a Ctrl-C dropped on its way never ends a run FINISHED
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (errors.Terminated) with its message
        _end(run, "KILLED", str(interrupt) or "interrupted by the user (Ctrl-C)")
        raise
    except EndedEarly as stop:
        client = MlflowClient()
        for key, value in stop.tags.items():
            client.set_tag(run.info.run_id, key, value)
        _end(run, "KILLED", str(stop))
        raise
    except BaseException as error:
        _end(run, "FAILED", str(error) or type(error).__name__)
        raise
    else:
        if run_id and "error" in MlflowClient().get_run(run_id).data.tags:
            MlflowClient().delete_tag(run_id, "error")  # a resumed run that finished no longer failed
        mlflow.end_run("FINISHED")
        finished = MlflowClient().get_run(run.info.run_id)
        line = catalog.closing_line(stage, run.info.run_id, finished.data.metrics, finished.data.tags)
        if line is not None:  # the study ends with its summary instead
            console.say(line)


def create_run(stage: str) -> str:
    """Create a RUNNING run of ``stage`` in the current experiment, owned by this process, without opening it.

    For a workflow that must claim a run before opening it (``stage_run(run_id=...)``), as a
    sweep's workers claim the study's parent.
    """
    experiment_id = retry_on_conflict(current_experiment_id)
    require_edit(stage, experiment_id=experiment_id)
    retry_on_conflict(lambda: mark_experiment(experiment_id))
    return MlflowClient().create_run(experiment_id, run_name=stage, tags={"stage": stage, **owner_tags()}).info.run_id


def _end(run: mlflow.ActiveRun, status: str, reason: str) -> None:
    client = MlflowClient()
    client.set_tag(run.info.run_id, "error", reason[:MAX_TAG_LENGTH])
    if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run.info.run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run.info.run_id, status)


def fail_run(run_id: str, reason: str, *, stage: str | None = None) -> None:
    """Mark a run that is still RUNNING as FAILED with ``reason`` (errors before a stage began).

    ``stage`` names a run that no stage opened yet (``mlflow run``'s), as a stage run is named and tagged.
    """
    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "error", reason[:MAX_TAG_LENGTH])
        if stage:
            client.set_tag(run_id, "stage", stage)
            client.set_tag(run_id, "mlflow.runName", stage)
        client.set_terminated(run_id, "FAILED")


def log_params(params: Mapping[str, Any]) -> None:
    """Log params, leaving alone any the run already has.

    ``mlflow run`` logs the entry point's parameters as the user typed them (``1e-4``), and a
    resumed run has them from its first attempt; MLflow refuses to change a param, and the
    value is the same, so those keys are skipped instead of failing. Sweep workers started
    together open the study's parent at once and both log its params: the later insert breaks
    the params' unique key, and the retry finds the other worker's.
    """
    run_id = mlflow.active_run().info.run_id

    def log_the_missing() -> None:
        existing = MlflowClient().get_run(run_id).data.params
        fresh = {key: _param_value(value) for key, value in params.items() if key not in existing}
        if fresh:
            mlflow.log_params(fresh)

    retry_on_conflict(log_the_missing)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if text else '""'


def retry_on_conflict(call: Callable[[], T], attempts: int = 3) -> T:
    """Run ``call``; run it again when a concurrent writer broke a unique key of the SQL store.

    MLflow's SQL store writes several things as a look-up followed by an insert (an experiment,
    a dataset input, a model alias): two processes doing the same at once both miss the row and the
    second insert fails. Its transaction is rolled back, and the retry finds the row the other
    process wrote and updates or links to it. Through a tracking server the same conflict arrives as
    a BAD_REQUEST whose message is the database's unique-key error; any other error is raised at once.
    """
    from mlflow.exceptions import MlflowException

    for _ in range(attempts - 1):
        try:
            return call()
        except MlflowException as error:
            if not is_conflict(error):
                raise
    return call()


# The server passes a SQL store's IntegrityError on as BAD_REQUEST with SQLAlchemy's text:
# "(psycopg.errors.UniqueViolation) duplicate key ...", "(sqlite3.IntegrityError) UNIQUE constraint failed ...".
_UNIQUE_KEY_ERROR = re.compile(r"^(BAD_REQUEST: )?\([\w.]*(IntegrityError|UniqueViolation)\)")


def is_conflict(error: Exception) -> bool:
    """Whether an MLflow error is a concurrent writer's broken unique key (locally or through a server)."""
    from sqlalchemy.exc import IntegrityError

    code = getattr(error, "error_code", None)
    # The SQL store raises its own error from the database's, or while handling it (log_batch).
    database_error = error.__cause__ or error.__context__
    if code == "RESOURCE_ALREADY_EXISTS" or isinstance(database_error, IntegrityError):
        return True
    return code == "BAD_REQUEST" and bool(_UNIQUE_KEY_ERROR.match(getattr(error, "message", "")))


WRITING = ("EDIT", "MANAGE")
"""The basic-auth permissions that let a user log runs in an experiment, or tag a model's versions and move its
aliases (READ and USE only read; NO_PERMISSIONS sees nothing)."""


def require_edit(stage: str, *, experiment_id: str | None = None, registered_model: str | None = None) -> None:
    """On a server with logins, say up front which grant a stage lacks, instead of a 403 after its work.

    The stage's run needs EDIT on ``experiment_id``; tagging a version of ``registered_model`` or moving its alias
    needs EDIT on the model. A model the user has no grant on may be a new name, which they may create.
    """
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not username or not mlflow.get_tracking_uri().startswith(("http://", "https://")):
        return
    user = _auth_get("/api/2.0/mlflow/users/get", {"username": username})
    if user is None or user["user"].get("is_admin"):
        return  # no logins on this server, or the admin, whom they do not restrict
    checks = []
    if experiment_id is not None:
        checks.append(("experiment", experiment_id, f"logs its run in experiment {experiment_id!r}"))
    if registered_model:
        checks.append(("registered_model", registered_model, f"tags versions of registered model {registered_model!r}"))
    for kind, resource, why in checks:
        found = _auth_get(
            "/api/3.0/mlflow/users/permissions/get",
            {"username": username, "resource_type": kind, "resource_id": resource},
        )
        if found is None:
            return  # an auth app without this API: its own 403 will say it
        permission = found["permission"]
        if permission in WRITING or (kind == "registered_model" and permission == "NO_PERMISSIONS"):
            continue
        where = (
            " (MLFLOW_EXPERIMENT_NAME selects another experiment: a new name makes one of your own)"
            if kind == "experiment"
            else ""
        )
        raise UserError(
            f"{stage} {why}, which needs EDIT on it, and {username!r} has {permission} there: ask an admin to grant "
            f"EDIT{where}."
        )


def _auth_get(endpoint: str, params: dict[str, str]) -> dict | None:
    """A GET of MLflow's basic-auth API as the current user; None where the server has no such API (no logins)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(get_default_host_creds(mlflow.get_tracking_uri()), endpoint, "GET", params=params)
    if response.status_code == 404:
        return None
    return verify_rest_response(response, endpoint).json()


def current_experiment_id() -> str:
    """The experiment new runs go to, by MLflow's documented settings.

    The active run's experiment; else ``MLFLOW_EXPERIMENT_NAME`` (created when new), which
    ``MLFLOW_EXPERIMENT_ID`` may not contradict; else ``MLFLOW_EXPERIMENT_ID``; else MLflow's
    default experiment. ``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID``, so an
    experiment set that way is found too. A stage opens its run in the experiment found here
    (``stage_run``), the one whose grants ``require_edit`` checked.
    """
    from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID

    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    name, given_id = MLFLOW_EXPERIMENT_NAME.get(), MLFLOW_EXPERIMENT_ID.get()
    if name:
        experiment = MlflowClient().get_experiment_by_name(name)
        found = experiment.experiment_id if experiment else MlflowClient().create_experiment(name)
        if given_id and given_id != found:
            raise MlflowException.invalid_parameter_value(
                f"The provided MLFLOW_EXPERIMENT_ID environment variable value `{given_id}` does not match the "
                f"experiment id `{found}` for experiment name `{name}`"
            )
        return found
    if given_id:
        return MlflowClient().get_experiment(given_id).experiment_id
    return DEFAULT_EXPERIMENT_ID


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The tag MLflow's UI reads to open an experiment on its training runs (not the GenAI overview of traces)."""
UI_PORT = 5000
"""Where ``mlflow ui`` serves by default; the study's summary asks for it where it is free."""
ML_WORKFLOW = "workflowType=machine_learning"
"""MLflow 3.17+'s UI opens an experiment in its GenAI view (traces) unless the address says this; with
its workflow switch on, it reads that instead of the experiment's ``mlflow.experimentKind`` tag."""


def mark_experiment(experiment_id: str) -> None:
    """Tag the experiment as model development for MLflow's UI, unless it says what it is already."""
    client = MlflowClient()
    key, kind = EXPERIMENT_KIND
    if key not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, key, kind)


def ui_address(tracking_uri: str, port: int = UI_PORT) -> str:
    """The MLflow UI's address: a tracking server's own, or ``mlflow ui``'s on 127.0.0.1:``port`` (a local store)."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def experiment_url(address: str, experiment_id: str) -> str:
    """The experiment's training runs (its description on top) in the MLflow UI at ``address``."""
    return f"{address}/#/experiments/{experiment_id}/runs?{ML_WORKFLOW}"


def run_url(address: str, experiment_id: str, run_id: str) -> str:
    """A run's page: its name, description (``mlflow.note.content``), metrics and artifacts."""
    return f"{address}/#/experiments/{experiment_id}/runs/{run_id}?{ML_WORKFLOW}"


def child_runs_url(address: str, experiment_id: str, parent_run_id: str, metric: str) -> str:
    """The runs nested in ``parent_run_id``, highest ``metric`` first, under the experiment's description.

    The UI keeps the runs table's filter and order in its address (``searchFilter``, ``orderByKey``,
    ``orderByAsc``); it keeps the columns it shows in the browser, so the metric is in the order only.
    """
    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}' AND metrics.{metric} >= 0",
            "orderByKey": f"metrics.`{metric}`",
            "orderByAsc": "false",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{address}/#/experiments/{experiment_id}/runs?{query}&{ML_WORKFLOW}"


def models_url(address: str, experiment_id: str) -> str:
    """The experiment's Models tab: its logged models, one per model stage, with their scores."""
    return f"{address}/#/experiments/{experiment_id}/models?{ML_WORKFLOW}"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a stage needs to know about an existing run (to resume it, for instance)."""

    run_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]


def child_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """The runs nested in a parent, oldest first: ``stage``, ``run_id``, ``seconds``, ``tags`` and their metrics."""
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return [
        {
            "stage": run.data.tags.get("stage", ""),
            "run_id": run.info.run_id,
            "seconds": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
            "tags": dict(run.data.tags),
            **run.data.metrics,
        }
        for run in runs
    ]


def run_predictions(run_id: str) -> pd.DataFrame | None:
    """The per-text predictions a model-stage run logged (``significance.PREDICTIONS_ARTIFACT``), or None.

    Runs from before the artifact existed, and runs of stages that predict nothing, have none.
    """
    artifact = Path(significance.PREDICTIONS_ARTIFACT)
    listed = {item.path for item in MlflowClient().list_artifacts(run_id, str(artifact.parent))}
    if str(artifact) not in listed:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=str(artifact), dst_path=folder)
        return pd.read_parquet(local)


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


def remove_store_if_empty(database: Path) -> bool:
    """Delete the SQLite store ``database`` if it is the current store and holds nothing kept; say whether.

    MLflow creates its default store at the first call, so a command that failed early (a
    mistyped dataset, a command run outside the project's folder) left an ``mlflow.db`` behind
    holding at most its own FAILED run. The caller knows the store is new; anything more in
    it (a run that did not fail, a registered or logged model, an artifacts folder beside it)
    keeps it. The store is read through MLflow's client, which answers for every schema it knows.
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).resolve() != database.resolve():
        return False
    if any((database.parent / folder).exists() for folder in ("mlruns", "mlartifacts")):
        return False
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        experiments = client.search_experiments(ViewType.ALL)
        ids = [experiment.experiment_id for experiment in experiments]
        held = (
            experiments.token  # more than a page of experiments: not a store a failed command just made
            or client.search_runs(ids, "attributes.status != 'FAILED'", ViewType.ALL, max_results=1)
            or client.search_registered_models(max_results=1)
            or client.search_logged_models(ids, max_results=1)
        )
    except (MlflowException, SQLAlchemyError):  # a store MLflow cannot read: not ours to remove
        return False
    if held:
        return False
    database.unlink()
    return True


def running_runs(experiment_id: str) -> list[RunRecord]:
    """Every run of the experiment whose status is RUNNING (for ``clean-stale``)."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    return [RunRecord(r.info.run_id, r.info.status, dict(r.data.tags), dict(r.data.params)) for r in runs]


# What ``process_state`` finds about the process that owns a run.
GONE = "gone"
ALIVE = "alive"
OTHER_HOST = "other host"
UNTRACKED = "untracked"

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_PID_NAMESPACE = Path("/proc/self/ns/pid")


def owner_tags() -> dict[str, str]:
    """Who owns a run started now: ``host`` and ``pid``, plus what tells this machine and process apart.

    A hostname alone is shared by a container with host networking and by two machines given
    one name, where the same pid is another process or none. So a run also records the
    kernel's ``boot_id`` (one per machine and boot), the ``pid_namespace`` (one per container
    that has its own pids) and ``pid_started`` (the process's start time in clock ticks since
    boot), where the system has them (Linux); elsewhere they are left out.
    """
    tags = {"host": socket.gethostname(), "pid": str(os.getpid())}
    machine = _this_machine()
    if machine is not None:
        tags.update({"boot_id": machine[0], "pid_namespace": machine[1], "pid_started": _start_time(psutil.Process())})
    return tags


def _this_machine() -> tuple[str, str] | None:
    """This kernel's boot id and this process's pid namespace; None where the kernel has neither (not Linux).

    psutil, which answers for processes, has no word for either: they are the kernel's own files.
    """
    try:
        return _BOOT_ID.read_text().strip(), os.readlink(_PID_NAMESPACE)
    except OSError:
        return None


def _start_time(process: psutil.Process) -> str:
    """When ``process`` started, in clock ticks since boot: the kernel's count, which no clock change moves.

    psutil gives both times in seconds since the epoch by the current clock, so their difference stays put.
    """
    return str(round((process.create_time() - psutil.boot_time()) * os.sysconf("SC_CLK_TCK")))


def process_state(tags: Mapping[str, str]) -> tuple[str, str]:
    """Whether the process that owns a run (its ``owner_tags``) is still there.

    Returns the state and a phrase describing it for messages. Only a run started on this
    machine since its last boot, in this process namespace, can be checked: its pid is gone,
    or now belongs to a process that started at another time (GONE), or is its owner (ALIVE).
    A run from elsewhere is OTHER_HOST, and one without those tags (started by an emotion-exp
    older than these tags, or on a system other than Linux, or not by emotion-exp) UNTRACKED: both are left alone.
    """
    owner, pid_text = tags.get("host"), tags.get("pid", "")
    if not owner or not pid_text.isdigit():
        return UNTRACKED, "no host/pid tags (not started by emotion-exp, or not yet set up)"
    if not all(tags.get(key) for key in ("boot_id", "pid_namespace", "pid_started")):
        return UNTRACKED, (
            f"pid {pid_text} on host {owner!r} recorded no boot id and process start time (an older emotion-exp, or a "
            "system other than Linux), so its owner cannot be told apart from a process of another machine or "
            "container with that hostname"
        )
    machine = _this_machine()
    if machine is None or machine != (tags["boot_id"], tags["pid_namespace"]):
        where = "another machine or container with that name, or this machine before a restart"
        return OTHER_HOST, f"pid {pid_text} on host {owner!r} ({where}), which cannot be checked from here"
    pid = int(pid_text)
    hidden = ALIVE, f"process {pid} on {owner!r} is still running (another user's; its start time is hidden)"
    try:
        started = _start_time(psutil.Process(pid))
    except psutil.AccessDenied:
        return hidden
    except psutil.NoSuchProcess:
        # /proc may hide other users' processes (hidepid), which psutil takes for gone: ask the kernel.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return GONE, f"process {pid} on {owner!r} is gone"
        except PermissionError:
            pass
        return hidden
    if started != tags["pid_started"]:
        return GONE, f"process {pid} on {owner!r} is gone (its pid now belongs to a process started later)"
    return ALIVE, f"process {pid} on {owner!r} is still running"
