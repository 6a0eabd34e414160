"""Where a sweep's Optuna study lives: its own database, never the tracking store's; passwords masked when shown.

Several workers share one study through this database, so what must be decided once (the
study's parent run, who scores the best trial) is claimed by an insert that the table's unique
key lets only one worker win, and a worker killed outright is found by Optuna's heartbeat.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from emotion_exp.errors import UserError

# Optuna's own tables, named as its schema (kept by alembic) names them: a study's user attributes
# are unique by (study_id, key), and a trial's heartbeat is one row per trial.
_USER_ATTRS = sqlalchemy.table(
    "study_user_attributes", sqlalchemy.column("study_id"), sqlalchemy.column("key"), sqlalchemy.column("value_json")
)
_HEARTBEATS = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("trial_id"))
_SCHEMA_ATTEMPTS = 3
_SCHEMA_RACES = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError)


def resolve_storage(optuna_storage: str, tracking_uri: str) -> str:
    """The Optuna storage URL: as given, or a sqlite file ``optuna.db`` beside a local tracking store.

    Refuses the tracking store's own database, and guesses nothing for a remote tracking store.
    """
    if optuna_storage:
        check_storage_url(optuna_storage)
    storage = optuna_storage or _default_storage(tracking_uri)
    if _database_of(storage) is not None and _database_of(storage) == _database_of(tracking_uri):
        raise UserError(
            f"--optuna_storage {storage} is the MLflow tracking store's own database ({tracking_uri}); both keep "
            "their schema revision in alembic's alembic_version table, so they must not share one. Pass another "
            "database (a sqlite file such as sqlite:///optuna.db, or a second PostgreSQL database)."
        )
    return storage


def check_storage_url(url: str) -> None:
    """Refuse an ``--optuna_storage`` that is no database URL this installation can open, before any work.

    SQLAlchemy's own errors for these (ArgumentError, NoSuchModuleError, an ImportError, sqlite's
    "unable to open database file") read as bugs. ``create_engine`` loads the dialect and its
    driver without connecting; an unreachable server is found when the sweep connects.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "such as sqlite:///optuna.db or postgresql://USER:PASSWORD@HOST/optuna"
    try:
        parsed = make_url(url)
    except ArgumentError:
        shown = url if "@" not in url else "***@" + url.rsplit("@", 1)[1]  # never print a password
        raise UserError(
            f"--optuna_storage {shown!r} is not a database URL: expected dialect://[user[:password]@host]/database, "
            f"{example}."
        ) from None
    try:
        sqlalchemy.create_engine(parsed).dispose()
    except NoSuchModuleError:
        raise UserError(
            f"--optuna_storage {shown_storage(url)}: SQLAlchemy has no database kind {parsed.drivername!r}; "
            f"pass a sqlite, postgresql or mysql URL, {example}."
        ) from None
    except ImportError as error:
        raise UserError(
            f"--optuna_storage {shown_storage(url)} needs the database driver {error.name or parsed.drivername!r}, "
            "which is not installed: install it, or name an installed driver in the URL (dialect+driver://...)."
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise UserError(
                f"--optuna_storage {url}: the folder {folder} of the sqlite file does not exist; create it or "
                "name a file in an existing folder."
            )


def _default_storage(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        folder = Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
        return f"sqlite:///{folder.parent / 'optuna.db'}"
    raise UserError(
        f"The tracking store {tracking_uri} is not a local file, so there is no obvious place for the Optuna "
        "study: pass --optuna_storage, e.g. a second database on the tracking server's PostgreSQL "
        "(postgresql://USER:PASSWORD@HOST/optuna) that every machine of the sweep reaches, or "
        "sqlite:///optuna.db for a study kept on this machine only."
    )


def _database_of(url: str) -> tuple[str, ...] | None:
    """What identifies a SQL database behind a URL (backend, host, port, database), or None for other URLs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (backend, str(Path(parsed.database or "").expanduser().resolve()))
    return (backend, parsed.host or "", str(parsed.port or ""), parsed.database or "")


def shown_storage(storage: str) -> str:
    """The storage URL without its password, for tags and messages."""
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study's database, with each running trial's worker recording a heartbeat every ``heartbeat_s``.

    A trial whose heartbeat is older than twice that (its worker was killed outright) is failed
    by the next worker that looks (``fail_dead_trials``), so it neither blocks the study's
    count nor stays RUNNING for ever.
    """
    for attempt in range(_SCHEMA_ATTEMPTS - 1):
        try:
            return _rdb_storage(url, heartbeat_s)
        except _SCHEMA_RACES:
            # Workers started together on a new database each create its tables, types and alembic
            # revision; all but one are refused (SQLite: "already exists"; PostgreSQL: DuplicateTable,
            # DuplicateObject or a unique violation). The next attempt finds the winner's schema.
            time.sleep(0.5 * (attempt + 1))
    return _rdb_storage(url, heartbeat_s)


def _rdb_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)


def claim(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any, replacing: Any = None) -> Any:
    """Set the study's user attribute ``key`` to ``value`` unless another worker did first; return what holds.

    ``replacing=None``: only if the key is absent (an insert, which the unique (study_id, key)
    key refuses to all but one worker); else only if it still holds ``replacing`` (an update
    conditioned on the old value). Optuna's own ``set_user_attr`` would let the last writer win.
    """
    encoded = json.dumps(value)
    if replacing is None:
        statement = sqlalchemy.insert(_USER_ATTRS).values(study_id=study_id, key=key, value_json=encoded)
    else:
        statement = (
            sqlalchemy.update(_USER_ATTRS)
            .where(_USER_ATTRS.c.study_id == study_id, _USER_ATTRS.c.key == key)
            .where(_USER_ATTRS.c.value_json == json.dumps(replacing))
            .values(value_json=encoded)
        )
    try:
        with storage.engine.begin() as connection:
            connection.execute(statement)
    except sqlalchemy.exc.IntegrityError:
        pass  # another worker inserted it first: its value holds
    return storage.get_study_user_attrs(study_id)[key]


def release(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any) -> None:
    """Give up a claim this worker holds (``value``), so that another worker or a later run can take it."""
    with storage.engine.begin() as connection:
        connection.execute(
            sqlalchemy.delete(_USER_ATTRS).where(
                _USER_ATTRS.c.study_id == study_id,
                _USER_ATTRS.c.key == key,
                _USER_ATTRS.c.value_json == json.dumps(value),
            )
        )


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.RDBStorage, silent_since: dict[int, float]
) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers.

    Optuna's ``fail_stale_trials`` fails those whose heartbeat stopped for the grace period. A
    trial with no heartbeat at all (left by an emotion-exp before heartbeats, or by a worker
    killed between creating the trial and its first heartbeat) Optuna never fails; it is failed
    here once this worker has seen it without one for the grace period (``silent_since``: when
    it first did, by this machine's monotonic clock; other machines' clocks and time zones, in
    which Optuna records start times, play no part).
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    running = {
        storage.get_trial_id_from_study_id_trial_number(study_id, trial.number): trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    }
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    with storage.engine.connect() as connection:
        query = sqlalchemy.select(_HEARTBEATS.c.trial_id).where(_HEARTBEATS.c.trial_id.in_(list(running)))
        beating = set(connection.execute(query).scalars())
    now = time.monotonic()
    for trial_id in running.keys() - beating:
        if now - silent_since.setdefault(trial_id, now) >= (storage.grace_period or 0):
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished (or another worker failed it) since it was read
    return sorted(
        trial.number for trial_id, trial in running.items() if storage.get_trial(trial_id).state == TrialState.FAIL
    )
