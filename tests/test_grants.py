"""What a user without EDIT meets on the team server: one sentence naming the missing grant, before any work.

Against the session's real tracking server with logins: a READ user's `predict` (it logs a run), `evaluate`
with EDIT on the experiment but READ on the registered model (it tags the version), `promote` with READ on
the model (it moves @champion). Each exits 1 naming the grant, the resource and, for the experiment, that
MLFLOW_EXPERIMENT_NAME selects another; nothing is logged. In an experiment of their own, predict works.
Grants are changed with the admin command of docs/team-server.md (revoke, then grant: a second grant is
refused as existing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emotion_exp.config import DataConfig
from emotion_exp.data import load_splits
from tests.conftest import REPO_ROOT
from tests.pyfunc_models import log_keyword_model
from tests.tracking_server import ADMIN, TrackingServer

HTTP_403 = re.compile(r"\b403\b")
"""The server's raw refusal in a message, not the digits in a port such as 40377 (a CI failure)."""

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:An input example was not provided")]


@dataclass(frozen=True)
class Shared:
    """An admin's experiment with a registered model whose @champion is one run's model, and a better run of
    the small dataset for promote."""

    server: TrackingServer
    experiment: str
    experiment_id: str
    model: str


@pytest.fixture(scope="module")
def shared(tracking_server: TrackingServer, small_dataset: Path) -> Shared:
    experiment, model = f"grants-{uuid.uuid4().hex[:8]}", f"grants-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tracking_server.credentials().items():
            patch.setenv(key, value)
        mlflow.set_tracking_uri(tracking_server.url)
        client = MlflowClient()
        experiment_id = client.create_experiment(experiment)
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.set_tag("stage", "tfidf")
            model_uri = log_keyword_model(input_example=False)
        version = mlflow.register_model(model_uri, model).version
        client.set_registered_model_alias(model, "champion", version)
        with mlflow.start_run(experiment_id=experiment_id):  # a candidate promote would register and crown
            mlflow.set_tags({"stage": "tfidf", "dataset_digest": load_splits(DataConfig(str(small_dataset))).digest})
            mlflow.log_metrics({"val_f1_weighted": 1.0, "val_accuracy": 1.0})
            log_keyword_model(input_example=False)
    return Shared(tracking_server, experiment, experiment_id, model)


def emotion_exp(shared: Shared, user: tuple[str, str], experiment: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI as that user would run it, in a fresh process."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_"))}
    environment |= {
        "MLFLOW_TRACKING_URI": shared.server.url,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        **shared.server.credentials(*user),
        # The champion is a model class of tests/: the process loading it imports it.
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO_ROOT)])),
    }
    command = [sys.executable, "-m", "emotion_exp", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)


def admin_runs(shared: Shared) -> list:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in shared.server.credentials().items():
            patch.setenv(key, value)
        return MlflowClient(shared.server.url).search_runs([shared.experiment_id])


def grant(shared: Shared, user: str, kind: str, resource: str, permission: str) -> None:
    """Change a user's grant with the command of docs/team-server.md: revoke the old one, grant the new one."""
    from mlflow.server import get_app_client

    with pytest.MonkeyPatch.context() as patch:
        for key, value in shared.server.credentials().items():
            patch.setenv(key, value)
        app = get_app_client("basic-auth", tracking_uri=shared.server.url)
        with pytest.raises(MlflowException, match="already exists"):  # why the docs revoke first
            app.grant_user_permission(user, kind, resource, permission)
    team = (REPO_ROOT / "docs/team-server.md").read_text()
    [code] = re.findall(r"python -c '(from mlflow\.server[^']+revoke_user_permission[^']+)'\n", team)
    code = (
        code.replace("http://127.0.0.1:5000", shared.server.url)
        .replace('"bob"', repr(user))
        .replace('"experiment", "1"', f"{kind!r}, {resource!r}")
        .replace('"EDIT"', repr(permission))
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **shared.server.credentials()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def texts_file(tmp_path: Path) -> Path:
    path = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["i feel so happy today", "this waiting makes me anxious"]}).to_csv(path, index=False)
    return path


def test_a_reader_predicting_is_told_to_use_an_experiment_of_their_own(shared: Shared, tmp_path: Path) -> None:
    reader = shared.server.add_user("READ", experiment_id=shared.experiment_id, registered_model=shared.model)
    options = ["predict", "--input", str(texts_file(tmp_path)), "--model_uri", f"models:/{shared.model}@champion"]

    refused = emotion_exp(shared, reader, shared.experiment, *options, "--output", str(tmp_path / "a.csv"))

    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and not HTTP_403.search(refused.stderr)
    assert f"experiment {shared.experiment_id!r}, which needs EDIT" in refused.stderr
    assert f"{reader[0]!r} has READ there" in refused.stderr and "MLFLOW_EXPERIMENT_NAME" in refused.stderr
    assert not (tmp_path / "a.csv").exists()
    assert [r.data.tags.get("stage") for r in admin_runs(shared)] == ["tfidf", "tfidf"]

    own = emotion_exp(shared, reader, f"own-{uuid.uuid4().hex[:8]}", *options, "--output", str(tmp_path / "b.csv"))

    assert own.returncode == 0, own.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "b.csv")) == 2


def test_evaluate_without_edit_on_the_model_says_so_before_scoring(shared: Shared, small_dataset: Path) -> None:
    user = shared.server.add_user("READ", experiment_id=shared.experiment_id, registered_model=shared.model)
    grant(shared, user[0], "experiment", shared.experiment_id, "EDIT")
    options = ["evaluate", "--dataset", str(small_dataset), "--model_uri", f"models:/{shared.model}@champion"]

    refused = emotion_exp(shared, user, shared.experiment, *options)

    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert f"evaluate tags versions of registered model {shared.model!r}, which needs EDIT" in refused.stderr
    assert f"{user[0]!r} has READ there" in refused.stderr
    assert [r.data.tags.get("stage") for r in admin_runs(shared)] == ["tfidf", "tfidf"]  # no evaluate run opened

    grant(shared, user[0], "registered_model", shared.model, "EDIT")
    allowed = emotion_exp(shared, user, shared.experiment, *options)

    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "evaluate" in [r.data.tags.get("stage") for r in admin_runs(shared)]


def test_promote_with_read_on_the_model_names_the_grant(shared: Shared, small_dataset: Path) -> None:
    user = shared.server.add_user("EDIT", experiment_id=shared.experiment_id, registered_model=shared.model)
    grant(shared, user[0], "registered_model", shared.model, "READ")

    refused = emotion_exp(
        shared, user, shared.experiment, "promote", "--dataset", str(small_dataset), "--registered_model", shared.model
    )

    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert f"promote tags versions of registered model {shared.model!r}, which needs EDIT" in refused.stderr
    with pytest.MonkeyPatch.context() as patch:
        for key, value in shared.server.credentials(ADMIN).items():
            patch.setenv(key, value)
        versions = MlflowClient(shared.server.url).search_model_versions(f"name = '{shared.model}'")
    assert len(versions) == 1


def test_promote_to_a_new_model_name_needs_no_grant_on_it(shared: Shared, small_dataset: Path) -> None:
    user = shared.server.add_user("EDIT", experiment_id=shared.experiment_id, registered_model=shared.model)
    name = f"own-{uuid.uuid4().hex[:8]}"

    result = emotion_exp(
        shared, user, shared.experiment, "promote", "--dataset", str(small_dataset), "--registered_model", name
    )

    assert result.returncode == 0, result.stderr[-2000:]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in shared.server.credentials(ADMIN).items():
            patch.setenv(key, value)
        champion = MlflowClient(shared.server.url).get_model_version_by_alias(name, "champion")
    assert champion.version == "1"


def test_predict_with_a_model_the_user_may_not_read_names_the_grant(shared: Shared, tmp_path: Path) -> None:
    user = shared.server.add_user("READ", experiment_id=shared.experiment_id, registered_model=shared.model)
    hidden = f"hidden-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in shared.server.credentials(ADMIN).items():
            patch.setenv(key, value)
        MlflowClient(shared.server.url).create_registered_model(hidden)
    options = ["predict", "--input", str(texts_file(tmp_path)), "--model_uri", f"models:/{hidden}@champion"]

    refused = emotion_exp(shared, user, f"own-{uuid.uuid4().hex[:8]}", *options)

    assert refused.returncode == 1, refused.stderr[-2000:]
    assert f"does not let {user[0]!r} read registered model {hidden!r}" in refused.stderr
    assert "READ on it" in refused.stderr and not HTTP_403.search(refused.stderr)
