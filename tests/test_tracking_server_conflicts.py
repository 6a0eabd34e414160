"""How a concurrent writer's broken unique key looks in a local SQL store and through a tracking server,
and what is not one.

The server passes the SQL store's IntegrityError on as a BAD_REQUEST carrying the database's text;
`retry_on_conflict` retries that (two studies at once log the same dataset input) and nothing else.
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from mlflow.exceptions import RestException

from emotion_exp.tracking import is_conflict, retry_on_conflict


def rest_error(code: str, message: str) -> RestException:
    return RestException({"error_code": code, "message": message})


POSTGRES_CONFLICT = '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'


@pytest.mark.parametrize(
    ("code", "message", "conflict"),
    [
        ("BAD_REQUEST", POSTGRES_CONFLICT, True),
        ("BAD_REQUEST", "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.dataset_uuid", True),
        ("RESOURCE_ALREADY_EXISTS", "Experiment 'x' already exists.", True),
        ("BAD_REQUEST", "Invalid value 'x' for parameter 'max_results'", False),
        ("PERMISSION_DENIED", "Permission denied", False),
        ("INTERNAL_ERROR", POSTGRES_CONFLICT, False),
    ],
)
def test_only_a_broken_unique_key_is_a_conflict(code: str, message: str, conflict: bool) -> None:
    assert is_conflict(rest_error(code, message)) is conflict


def test_a_conflict_is_retried_and_another_error_is_raised_at_once() -> None:
    calls = []

    def conflicting_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise rest_error("BAD_REQUEST", POSTGRES_CONFLICT)
        return "linked"

    assert retry_on_conflict(conflicting_once) == "linked" and len(calls) == 2

    def denied() -> None:
        calls.append(1)
        raise rest_error("PERMISSION_DENIED", "Permission denied")

    calls.clear()
    with pytest.raises(RestException, match="Permission denied"):
        retry_on_conflict(denied)
    assert len(calls) == 1


def test_params_another_process_logged_first_are_kept_and_the_rest_logged(tracking_uri: str) -> None:
    """Sweep workers started together open the study's parent at once and both log its params. MLflow's store
    looks a run's params up, then inserts the missing ones: here another writer inserts one in between (the
    interleaving that failed a worker under load), the params' unique key refuses the batch, and the retry
    finds that param and logs the rest."""
    import mlflow
    from mlflow.store.tracking.dbmodels.models import SqlParam
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from emotion_exp import tracking

    written: list[str] = []

    def another_writer_first(session: Session, *_: object) -> None:
        rows = [row for row in session.new if isinstance(row, SqlParam)]
        if rows and not written:
            with contextlib.closing(sqlite3.connect(tracking_uri.removeprefix("sqlite:///"))) as other:
                other.execute(
                    "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                    (rows[0].key, rows[0].value, rows[0].run_uuid),
                )
                other.commit()
            written.append(rows[0].key)

    with mlflow.start_run() as run:
        event.listen(Session, "before_flush", another_writer_first)
        try:
            tracking.log_params({"seed": 42, "model": "tiny"})
        finally:
            event.remove(Session, "before_flush", another_writer_first)

    assert written, "the other writer never came first: the test did not force the conflict"
    assert mlflow.get_run(run.info.run_id).data.params == {"seed": "42", "model": "tiny"}
