"""Where a sweep's Optuna study lives: its own database, never the tracking store's; passwords masked when shown.

Several workers share one study through this database, and through Optuna's public API only: what
must be decided once (what the study searches, its parent run, who scores the best trial) is a
study user attribute, and a worker killed outright is found by Optuna's heartbeat and its trial
queued again (``RetryHeartbeatStaleTrialCallback``). Optuna's ``set_user_attr`` lets the last
writer win, so each such decision is taken under a lock: a row of ``emotion_exp_claim_locks``, a
table of this project's own in the study's database (Optuna's tables are Optuna's business).
"""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from emotion_exp.errors import UserError

_TABLES = sqlalchemy.MetaData()
CLAIM_LOCKS = sqlalchemy.Table(
    "emotion_exp_claim_locks",
    _TABLES,
    sqlalchemy.Column("study_id", sqlalchemy.Integer, primary_key=True),
    sqlalchemy.Column("key", sqlalchemy.String(255), primary_key=True),
    sqlalchemy.Column("holder", sqlalchemy.String(32), nullable=False),
    sqlalchemy.Column("taken_at", sqlalchemy.DateTime, nullable=False, server_default=sqlalchemy.func.now()),
)
"""Our own table: a row while a worker decides the study's user attribute ``key`` (the unique key admits one)."""
ABANDONED_S = 60
"""A lock held longer was left by a worker killed while deciding (which takes a few queries): it is taken over."""
LOCK_POLL_S = 0.05
STARTED = "started"
"""The user attribute a trial's worker sets first in the objective, to the trial's number (``fail_dead_trials``)."""
_SCHEMA_ATTEMPTS = 3
_SCHEMA_RACES = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError)


def resolve_storage(optuna_storage: str, tracking_uri: str) -> str:
    """The Optuna storage URL: as given, or a sqlite file ``optuna.db`` beside a local tracking store.

    Refuses the tracking store's own database, and guesses nothing for a remote tracking store.
    """
    storage = optuna_storage or _default_storage(tracking_uri)
    # Before the driver check: sharing MLflow's database is wrong whichever driver would open it.
    if _database_of(storage) is not None and _database_of(storage) == _database_of(tracking_uri):
        raise UserError(
            f"--optuna_storage {shown_storage(storage)} is the MLflow tracking store's own database "
            f"({shown_storage(tracking_uri)}); both keep their schema revision in alembic's alembic_version table, "
            "so they must not share one. Pass another database (a sqlite file such as sqlite:///optuna.db, or a "
            "second PostgreSQL database)."
        )
    if optuna_storage:
        check_storage_url(optuna_storage)
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
    count nor stays RUNNING for ever, and is queued again with its parameters (once: a second
    death leaves the study to draw new ones). Our lock table is created beside Optuna's.
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
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    _TABLES.create_all(storage.engine)
    return storage


def claim(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any, replacing: Any = None) -> Any:
    """Set the study's user attribute ``key`` to ``value`` unless another worker did first; return what holds.

    ``replacing=None``: only if the key is unset; else only if it still holds ``replacing`` (or
    nothing). Decided under the study's lock for ``key``, so of workers claiming at once exactly
    one wins and every one returns the winner's value.
    """
    with _locked(storage, study_id, key):
        held = storage.get_study_user_attrs(study_id).get(key)
        if held is None or (replacing is not None and held == replacing):
            storage.set_study_user_attr(study_id, key, value)
            return value
        return held


def release(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any) -> None:
    """Give up a claim this worker holds (``value``), so that another worker or a later run can take it."""
    with _locked(storage, study_id, key):
        if storage.get_study_user_attrs(study_id).get(key) == value:
            storage.set_study_user_attr(study_id, key, None)  # Optuna deletes no user attribute: None is unclaimed


@contextlib.contextmanager
def _locked(storage: optuna.storages.RDBStorage, study_id: int, key: str) -> Iterator[None]:
    """Hold the study's lock for ``key``: insert its row (the primary key admits one), wait while another holds it."""
    holder, deadline = uuid.uuid4().hex, time.monotonic() + 2 * ABANDONED_S
    while not _take_lock(storage.engine, study_id, key, holder):
        if time.monotonic() > deadline:  # bounded: an abandoned lock is cleared after ABANDONED_S
            raise RuntimeError(f"the lock of {key!r} in study {study_id} stayed taken for {2 * ABANDONED_S} s")
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        with storage.engine.begin() as connection:
            connection.execute(
                sqlalchemy.delete(CLAIM_LOCKS).where(*_lock_row(study_id, key), CLAIM_LOCKS.c.holder == holder)
            )


def _take_lock(engine: sqlalchemy.engine.Engine, study_id: int, key: str, holder: str) -> bool:
    """Take the lock for ``holder``, or clear it if it was abandoned (by the database's clock); whether taken."""
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.insert(CLAIM_LOCKS).values(study_id=study_id, key=key, holder=holder))
        return True
    except sqlalchemy.exc.IntegrityError:
        pass  # another worker holds it
    with engine.begin() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        abandoned = now.replace(tzinfo=None) - timedelta(seconds=ABANDONED_S)
        connection.execute(
            sqlalchemy.delete(CLAIM_LOCKS).where(*_lock_row(study_id, key), CLAIM_LOCKS.c.taken_at < abandoned)
        )
    return False


def _lock_row(study_id: int, key: str) -> tuple[Any, ...]:
    return CLAIM_LOCKS.c.study_id == study_id, CLAIM_LOCKS.c.key == key


def mark_started(trial: optuna.Trial) -> None:
    """Say that the objective runs ``trial``, so Optuna's heartbeat of it has begun (``fail_dead_trials``)."""
    trial.set_user_attr(STARTED, trial.number)


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.RDBStorage, silent_since: dict[int, float]
) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers.

    Optuna's ``fail_stale_trials`` fails those whose heartbeat stopped for the grace period (and
    the storage's callback queues them again). A trial with no heartbeat at all Optuna never fails:
    its worker was killed between creating it and the objective's start (``mark_started``, once
    Optuna's heartbeat thread runs), or it was left by an emotion-exp before heartbeats. Such a
    trial has no ``STARTED`` mark of its own number, and is failed here once this worker has seen
    it unmarked for the grace period (``silent_since``: when it first did, by this machine's
    monotonic clock; other machines' clocks and time zones, in which Optuna records start times,
    play no part).
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = {trial.number: storage.get_trial_id_from_study_id_trial_number(study_id, trial.number) for trial in running}
    now = time.monotonic()
    for trial in running:
        if trial.user_attrs.get(STARTED) == trial.number:
            continue
        if now - silent_since.setdefault(trial.number, now) >= (storage.grace_period or 0):
            try:
                storage.set_trial_state_values(ids[trial.number], state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished (or another worker failed it) since it was read
    return sorted(number for number, trial_id in ids.items() if storage.get_trial(trial_id).state == TrialState.FAIL)
