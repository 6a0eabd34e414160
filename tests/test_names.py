"""The name rules of ``emotion_exp.names`` agree with what MLflow's public client accepts on a real store.

The rules are our own, written from MLflow's messages; these tests ask the session's SQLite store
(``create_registered_model``, ``get_run``) about names on both sides of each rule, so a release of
MLflow that changes a rule fails here instead of letting the two drift apart.
"""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from emotion_exp import names
from emotion_exp.errors import UserError


def we_refuse(check, value: str) -> bool:
    try:
        check("--flag", value)
    except UserError:
        return True
    return False


def mlflow_refuses(call, value: str) -> bool:
    """Whether MLflow's ``call`` refuses ``value`` as invalid (not merely absent, as an unknown run id is)."""
    try:
        call(value)
    except MlflowException as error:
        if error.error_code == "INVALID_PARAMETER_VALUE":
            return True
        assert error.error_code == "RESOURCE_DOES_NOT_EXIST", error.message
    return False


def test_registered_model_names_are_refused_exactly_where_mlflow_refuses_them() -> None:
    token = uuid.uuid4().hex[:8]  # every name the store accepts is new: the session's registry is shared
    candidates = [
        f"emotion-{token}",
        f"{token}.v2",
        f"my {token}",
        f"émotion-{token}",
        f".{token}",
        f"{token}..",
        f"{token}/emotion",
        f"{token}:emotion",
        f"..{token}",
        ".",
        "..",
        "",
        "   ",
    ]
    client = MlflowClient()

    verdicts = {
        name: (
            we_refuse(names.check_registered_model_name, name),
            mlflow_refuses(client.create_registered_model, name),
        )
        for name in candidates
    }

    assert {name: ours for name, (ours, _) in verdicts.items()} == {
        name: theirs for name, (_, theirs) in verdicts.items()
    }
    assert sum(ours for ours, _ in verdicts.values()) == 7  # both sides of every rule were asked


def test_quotes_and_backslashes_are_refused_here_though_mlflow_takes_them() -> None:
    """Our one rule on top of MLflow's: versions are found by search filters, which these would break."""
    token = uuid.uuid4().hex[:8]
    for name in (f"it's-{token}", f'say-"{token}"', f"back\\{token}", f"tick`{token}"):
        assert we_refuse(names.check_registered_model_name, name)
        assert not mlflow_refuses(MlflowClient().create_registered_model, name)


def test_run_ids_are_refused_exactly_where_mlflow_refuses_them() -> None:
    candidates = [
        uuid.uuid4().hex,
        "abc",
        "a" * 256,
        "a-b_c",
        "aé",  # MLflow's word characters are Unicode's after the first
        "a" * 257,
        "_a",
        "-a",
        "éa",
        "a.b",
        "a/b",
        "../x",
        "a b",
        "",
    ]
    client = MlflowClient()

    verdicts = {
        run_id: (we_refuse(names.check_run_id, run_id), mlflow_refuses(client.get_run, run_id)) for run_id in candidates
    }

    assert {run_id: ours for run_id, (ours, _) in verdicts.items()} == {
        run_id: theirs for run_id, (_, theirs) in verdicts.items()
    }
    assert sum(ours for ours, _ in verdicts.values()) == 9
    # Refused here and by MLflow 3.18; MLflow 3.11 took it (its pattern's `$` matched before a final newline).
    assert we_refuse(names.check_run_id, "abc\n")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("team/emotion", "is not a valid registered model name: names cannot contain '/' or ':'"),
        ("..", "must not resolve to other names"),
        ("  ", "is not a valid registered model name: it is empty"),
        ("it's", "holds a quote or backslash"),
    ],
)
def test_a_refused_name_says_why_and_what_to_use(name: str, message: str) -> None:
    with pytest.raises(UserError, match=r"use letters, digits, '-', '_' and '\.'\.$") as refused:
        names.check_registered_model_name("--registered_model", name)
    assert message in str(refused.value)
