"""Where a sweep's Optuna study lives: its own database, never the tracking store's; passwords masked when shown."""

from __future__ import annotations

from pathlib import Path

from emotion_exp.errors import UserError


def resolve_storage(optuna_storage: str, tracking_uri: str) -> str:
    """The Optuna storage URL: as given, or a sqlite file ``optuna.db`` beside a local tracking store.

    Refuses the tracking store's own database, and guesses nothing for a remote tracking store.
    """
    storage = optuna_storage or _default_storage(tracking_uri)
    if _database_of(storage) is not None and _database_of(storage) == _database_of(tracking_uri):
        raise UserError(
            f"--optuna_storage {storage} is the MLflow tracking store's own database ({tracking_uri}); both keep "
            "their schema revision in alembic's alembic_version table, so they must not share one. Pass another "
            "database (a sqlite file such as sqlite:///optuna.db, or a second PostgreSQL database)."
        )
    return storage


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
