"""The model registry edge: registration, the champion alias and loading registered models.

Registry stages are deprecated in MLflow 3, so the champion is an alias (``@champion``).
A run's model is the logged model whose source is that run (named after its stage); a run gets at most
one registered version per registered model, however often it is registered or promoted.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emotion_exp import console, names, tracking
from emotion_exp.config import CHAMPION_ALIAS, FOLLOW_THE_DATA, REGISTERED_MODEL
from emotion_exp.contract import label_names_of
from emotion_exp.errors import UserError

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from mlflow.pyfunc import PyFuncModel

# The promotion note's heading: where a version's description (its model card) ends and the note begins.
PROMOTION_HEADING = "## Promotion"
# The version tag naming the promote run that wrote the note (machine state lives in tags, not in text).
PROMOTION_RUN_TAG = "promote_run_id"
T = TypeVar("T")


def registered_model_description(label_names: Sequence[str]) -> str:
    """What a registered model's page says it is: a classifier of these labels, and how to call it."""
    return (
        f"Text classifier into {len(label_names)} labels: {', '.join(label_names)} (pyfunc). Input: a DataFrame "
        "with a `text` column or a list of strings. Output: `label` and one `prob_<label>` column per label. "
        "The `champion` alias marks the best run promoted by `emotion-exp promote`."
    )


@dataclass(frozen=True)
class Candidate:
    """A finished run that logged a model and scored ``value`` on the promotion metric."""

    run_id: str
    model_uri: str
    stage: str
    value: float
    val_accuracy: float
    start_time: int
    shown: str = ""
    """``value`` as people read it: with its 95% interval where the run logged one."""


@dataclass(frozen=True)
class Champion:
    """The version the champion alias points at, and what its run scored on which data."""

    version: str
    run_id: str | None
    digest: str | None
    value: float | None


def _not_found(error: MlflowException) -> bool:
    return error.error_code == "RESOURCE_DOES_NOT_EXIST"


def _run_of(model_uri: str) -> str | None:
    """The run that produced a ``runs:/`` or ``models:/<model_id>`` URI (None for other URIs)."""
    if match := re.fullmatch(r"runs:/([^/]+)/.+", model_uri):
        return match.group(1)
    if match := re.fullmatch(r"models:/(m-[0-9a-f]+)", model_uri):
        return MlflowClient().get_logged_model(match.group(1)).source_run_id
    return None


def version_of_run(name: str, run_id: str) -> str | None:
    """The registered version of ``name`` made from ``run_id``'s model, if there is one (the oldest)."""
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    except MlflowException as error:
        if _not_found(error):
            return None
        raise
    return str(min(int(v.version) for v in versions)) if versions else None


def registered_name(requested: str, dataset_name: str, label_names: Sequence[str]) -> str:
    """The registered model a stage uses: ``requested``, or for ``auto`` a name that follows the data.

    Models of the six emotion labels (the bundled sample, the emotion hub dataset, its original
    release) go to ``emotion-classifier``; other data to ``<dataset name>-classifier`` (``reviews.csv``
    gives ``reviews-classifier``, a folder its name), so unrelated models never share a name.
    """
    from emotion_exp.data import STUDY_LABELS

    if requested != FOLLOW_THE_DATA:
        return requested
    if set(label_names) == set(STUDY_LABELS):
        return REGISTERED_MODEL
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name.rsplit("/", 1)[-1]).strip("-.")
    return f"{slug or 'data'}-classifier"


def check_labels(name: str, label_names: Sequence[str]) -> None:
    """Refuse to add a model to ``name`` when its newest version predicts other labels.

    A registered model's versions stand in for each other (``@champion`` moves between them), so
    they must answer with the same labels; the labels are read from the versions' signatures.
    """
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        if _not_found(error):
            return
        raise
    if not versions:
        return
    newest = max(versions, key=lambda v: int(v.version))
    signature = mlflow.models.get_model_info(f"models:/{name}/{newest.version}").signature
    theirs = label_names_of(signature.outputs.input_names()) if signature and signature.outputs else None
    if theirs is not None and set(theirs) != set(label_names):
        raise UserError(
            f"Registered model {name!r} holds models for the labels {', '.join(theirs)} (version "
            f"{newest.version}); this model's labels are {', '.join(label_names)}. Models with other labels "
            f"cannot share a registered model: pass --registered_model with another name (or 'auto', which "
            "names it after the data), or '' not to register."
        )


def register(model_uri: str, name: str, label_names: Sequence[str]) -> str:
    """Register a logged model as a version of ``name`` once; return its version.

    Registering the same run's model again returns the version it already has, so stages and
    ``promote`` can both register without making duplicates. Two processes registering the same
    run at once both find no version and make one each: the oldest stays, and the process that
    made a later one deletes it. A model whose labels differ from the registered model's is
    refused (``check_labels``).
    """
    client = MlflowClient()
    run_id = _run_of(model_uri)
    if run_id and (existing := version_of_run(name, run_id)):
        return existing
    check_labels(name, label_names)
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        # A server with logins answers a name that does not exist 403, as it answers one the user may not read.
        if not (_not_found(error) or error.error_code == "PERMISSION_DENIED"):
            raise
        try:
            client.create_registered_model(name, description=registered_model_description(label_names))
        except MlflowException as race:  # another process created it since the look-up
            if race.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    # register_model prints "already exists. Creating a new version" even for the model made just above;
    # the stage's closing line says which version it became.
    with contextlib.redirect_stderr(io.StringIO()):
        version = str(mlflow.register_model(model_uri, name).version)
    if run_id and (oldest := version_of_run(name, run_id)) != version:
        client.delete_model_version(name, version)
        return oldest
    return version


def candidates(experiment_id: str, digest: str, metric: str) -> list[Candidate]:
    """FINISHED runs of the experiment tagged with ``digest`` that logged a model and have ``metric``."""
    models = _logged_models(experiment_id)
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.dataset_digest = '{digest}' AND attributes.status = 'FINISHED'",
        output_format="list",
    )
    return [
        Candidate(
            run_id=run.info.run_id,
            model_uri=models[run.info.run_id],
            stage=run.data.tags.get("stage", ""),
            value=run.data.metrics[metric],
            val_accuracy=run.data.metrics.get("val_accuracy", float("-inf")),
            start_time=run.info.start_time or 0,
            shown=console.shown_score(run.data.metrics, metric),
        )
        for run in runs
        if run.info.run_id in models and metric in run.data.metrics
    ]


def _logged_models(experiment_id: str) -> dict[str, str]:
    """Run id -> URI of the newest READY logged model the run produced.

    A stage names its model after itself (``finetune``); runs of emotion-exp before that named it ``model``.
    """
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        order_by=[{"field_name": "creation_time", "ascending": True}],
        output_format="list",
    )
    return {m.source_run_id: m.model_uri for m in found if m.source_run_id and m.status == LoggedModelStatus.READY}


def model_of_run(run_id: str) -> str | None:
    """The URI of the model that ``run_id`` logged (the newest READY one), or None."""
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    return _logged_models(experiment_id).get(run_id)


def digests_with_models(experiment_id: str) -> dict[str, int]:
    """How many FINISHED runs with a logged model each dataset digest has (for error messages)."""
    models = _logged_models(experiment_id)
    counts: dict[str, int] = {}
    for run in mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="attributes.status = 'FINISHED'", output_format="list"
    ):
        if run.info.run_id in models:
            digest = run.data.tags.get("dataset_digest", "(none)")
            counts[digest] = counts.get(digest, 0) + 1
    return counts


def champion(name: str, metric: str, alias: str = CHAMPION_ALIAS) -> Champion | None:
    """The current champion of ``name`` with its run's digest and ``metric``; None without one."""
    client = MlflowClient()
    try:
        version = client.get_registered_model(name).aliases.get(alias)
    except MlflowException as error:
        if _not_found(error):
            return None
        raise
    if version is None:
        return None
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        return Champion(str(version), None, None, None)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if _not_found(error):
            return Champion(str(version), run_id, None, None)
        raise
    return Champion(str(version), run_id, run.data.tags.get("dataset_digest"), run.data.metrics.get(metric))


def set_champion(name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
    """Point the champion alias at ``version`` (retried when another process set it at the same moment)."""
    tracking.retry_on_conflict(lambda: MlflowClient().set_registered_model_alias(name, alias, version))


def describe_version(name: str, version: str, note: str, tags: dict[str, str], *, overwrite: bool) -> None:
    """Tag a version, and write ``note`` (markdown) as its description when asked or when it has none."""
    client = MlflowClient()
    set_version_tags(name, version, tags)
    if overwrite or not client.get_model_version(name, version).description:
        client.update_model_version(name, version, description=note)


def note_promotion(name: str, version: str, note: str, tags: dict[str, str], *, replace: bool) -> None:
    """Tag a version and put ``note`` (starting with ``PROMOTION_HEADING``) after its model card.

    An existing note (the version has the ``promote_run_id`` tag) is replaced only when ``replace``
    is set, so re-running a promote that changes nothing leaves the note of the decision that did.
    """
    client = MlflowClient()
    noted = PROMOTION_RUN_TAG in client.get_model_version(name, version).tags
    set_version_tags(name, version, tags)
    if noted and not replace:
        return
    description = client.get_model_version(name, version).description or ""
    card = description.partition(PROMOTION_HEADING)[0] if noted else description
    client.update_model_version(name, version, description=f"{card.rstrip()}\n\n{note}".lstrip())


def resolve_version(model_uri: str) -> tuple[str, str] | None:
    """The registered (name, version) a model URI stands for: its alias or number, else its run's oldest version.

    None when the model was never registered.
    """
    client = MlflowClient()
    if match := re.fullmatch(r"models:/([^/@]+)@(.+)", model_uri):
        return match.group(1), str(client.get_model_version_by_alias(match.group(1), match.group(2)).version)
    if match := re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri):
        return match.group(1), match.group(2)
    run_id = _run_of(model_uri)
    if run_id is None:
        return None
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    oldest = min(versions, key=lambda v: int(v.version), default=None)
    return (oldest.name, str(oldest.version)) if oldest else None


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    """Tag a registered version (the registry page lists them)."""
    client = MlflowClient()
    for key, value in tags.items():
        # Two promotes noting the same version at once both insert the tag; the retry updates it.
        tracking.retry_on_conflict(functools.partial(client.set_model_version_tag, name, version, key, value))


@dataclass(frozen=True)
class LoadedModel:
    """A loaded pyfunc model and what ``model_uri`` resolved to when it was loaded."""

    model: PyFuncModel
    source: dict[str, str]
    """``model_name``, ``model_version`` (for a registered model) and ``model_run_id``, as tags to record."""


def load_model(model_uri: str, model_config: dict[str, Any] | None = None) -> LoadedModel:
    """Load an emotion-exp text classifier; a missing model, alias, version or run, or another model: ``UserError``.

    A registered model's alias is resolved to its version first, and that version is loaded, so
    what is recorded is what predicted even if the alias moves meanwhile. The message of an error
    says what the registry does hold and how to create the missing piece. ``model_config``
    overrides keys of the logged one (``pyfunc.MODEL_CONFIG``: the runtime, the limits).
    """
    uri, source = resolve(model_uri)
    model = _existing(model_uri, uri, lambda found: mlflow.pyfunc.load_model(found, model_config=model_config))
    _check_text_classifier(model_uri, model)
    return LoadedModel(model, source)


def model_info(model_uri: str) -> ModelInfo:
    """A model's metadata (flavors, signature) without loading it; a missing model is a ``UserError`` as above."""
    return _existing(model_uri, resolve(model_uri)[0], mlflow.models.get_model_info)


MODEL_URI_FORMS = "models:/<name>/<version>, models:/<name>@<alias> or runs:/<run id>/<path>"


def check_model_uri(model_uri: str) -> None:
    """Refuse a ``models:/`` or ``runs:/`` URI that MLflow could not read (``runs:/../../etc``, ``models:/``).

    MLflow raises its own error for them, which would read as a bug; other URIs (a local folder,
    ``s3://...``) are MLflow's to check.
    """
    if not model_uri.strip():
        raise UserError(f"The model URI is empty: expected {MODEL_URI_FORMS} (or a local model folder).")
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
        if not run_id or not path:
            raise UserError(
                f"{model_uri!r} is not a model URI: expected {MODEL_URI_FORMS}, such as runs:/<id>/<stage>."
            )
        names.check_run_id(f"{model_uri}: the run id", run_id)
    elif model_uri.startswith("models:/"):
        match = re.fullmatch(r"models:/([^/@]+)(?:@[^/@]+|/[^/@]+)?", model_uri)
        if match is None:
            raise UserError(f"{model_uri!r} is not a model URI: expected {MODEL_URI_FORMS}.")
        names.check_registered_model_name(f"{model_uri}: the model name", match.group(1))


def resolve(model_uri: str) -> tuple[str, dict[str, str]]:
    """The URI to load (an alias resolved to its version) and the source tags of ``LoadedModel``."""
    check_model_uri(model_uri)
    source: dict[str, str] = {}
    uri = model_uri
    if match := re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(\d+))", model_uri):
        name, alias, version = match.groups()
        _check_registered(model_uri, name, alias=alias, version=version)
        client = MlflowClient()
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        source = {"model_name": name, "model_version": str(found.version), "model_run_id": found.run_id or ""}
        uri = f"models:/{name}/{found.version}"
    elif match := re.fullmatch(r"runs:/([^/]+)/.+", model_uri):
        source = {"model_run_id": match.group(1)}
    return uri, source


def run_of_model(model_uri: str) -> str:
    """The run that logged the model a ``models:/`` or ``runs:/`` URI names; a missing one is a ``UserError``."""
    uri, source = resolve(model_uri)
    run_id = source.get("model_run_id") or _existing(model_uri, uri, _run_of)
    if not run_id:
        raise UserError(
            f"{model_uri} names no run that logged it, so its per-text predictions cannot be found; pass a run id, "
            "models:/<name>/<version>, models:/<name>@<alias> or runs:/<run id>/<stage>."
        )
    return run_id


def _existing(model_uri: str, uri: str, read: Callable[[str], T]) -> T:
    """``read(uri)``; a model the store does not hold is a ``UserError`` naming ``model_uri``."""
    try:
        return read(uri)
    except MlflowException as error:
        if _not_found(error):
            raise UserError(
                f"Model {model_uri} was not found in the MLflow store {mlflow.get_tracking_uri()}: "
                f"{error.message}.{_named_otherwise(model_uri)} Pass --model_uri with an existing model "
                "(models:/<name>@<alias>, models:/<name>/<version> or runs:/<run id>/<stage>)."
            ) from error
        raise


def _named_otherwise(model_uri: str) -> str:
    """Where a ``runs:/<run id>/<name>`` URI's run keeps its model when it is named otherwise ('' if it has none).

    Models are named after their stage (``runs:/<run id>/tfidf``); ``runs:/<run id>/model`` finds
    only those of runs from before.
    """
    match = re.fullmatch(r"runs:/([^/]+)/([^/]+)", model_uri)
    if match is None:
        return ""
    run_id = match.group(1)
    try:
        found = model_of_run(run_id)
    except MlflowException as error:
        if _not_found(error):  # no such run: the error above says so
            return ""
        raise
    if found is None:
        return ""
    name = mlflow.get_logged_model(found.removeprefix("models:/")).name
    return f" Run {run_id} logged its model as {name!r}: runs:/{run_id}/{name}."


def _check_text_classifier(model_uri: str, model: PyFuncModel) -> None:
    """Refuse a model that does not answer texts with ``label`` and ``prob_<label>`` columns (another project's)."""
    outputs = model.metadata.get_output_schema()
    names = outputs.input_names() if outputs is not None and outputs.has_input_names() else []
    if "label" not in names or not any(str(n).startswith("prob_") for n in names):
        raise UserError(
            f"{model_uri} is not an emotion-exp text classifier: its signature outputs "
            f"{', '.join(map(str, names)) or 'nothing declared'}, not 'label' and one 'prob_<label>' per label; "
            "pass a model that emotion-exp finetune, probe or tfidf logged."
        )


def _check_registered(model_uri: str, name: str, *, alias: str | None, version: str | None) -> None:
    client = MlflowClient()
    how_to = (
        "Create it with `emotion-exp finetune` (registers the fine-tuned model) and "
        "`emotion-exp promote` (points @champion at the best run), or pass another --model_uri."
    )
    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "PERMISSION_DENIED":  # a server with logins says no more than that
            user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this user")
            raise UserError(
                f"{model_uri}: the tracking server {mlflow.get_tracking_uri()} does not let {user!r} read registered "
                f"model {name!r}, or has none of that name: ask an admin for READ on it, or check the name."
            ) from error
        if not _not_found(error):
            raise
        names = sorted(m.name for m in client.search_registered_models())
        raise UserError(
            f"{model_uri}: no registered model named {name!r} in the MLflow store {mlflow.get_tracking_uri()} "
            f"(registered models: {', '.join(names) or 'none'}). {how_to}"
        ) from error
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    holds = f"versions: {', '.join(map(str, versions)) or 'none'}; aliases: " + (
        ", ".join(f"@{a} -> {v}" for a, v in sorted(registered.aliases.items())) or "none"
    )
    if alias is not None and alias not in registered.aliases:
        raise UserError(f"{model_uri}: registered model {name!r} has no alias @{alias} ({holds}). {how_to}")
    if version is not None and int(version) not in versions:
        raise UserError(f"{model_uri}: registered model {name!r} has no version {version} ({holds}). {how_to}")
