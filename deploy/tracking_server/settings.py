"""server.json: the settings of the first `up`, which later commands keep; URIs in it never hold a password."""

from __future__ import annotations

import argparse
import ipaddress
import json

from .errors import SetupError
from .layout import Layout
from .object_store import BUCKET, object_store_ports
from .private_files import read_private, secret, write_private, write_secret
from .processes import free_port

EXTERNAL_URIS = ("backend_store_uri", "auth_database_uri")
PERMISSIONS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")


def load_settings(layout: Layout) -> dict:
    if not layout.settings.exists():
        return {}
    text = read_private(layout.settings)
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise SetupError(
            f"{layout.settings} is damaged ({error.msg} at character {error.pos}): restore it from a backup, or "
            "move it away and run `up` with the same --port and --pg-port to write it again."
        ) from error
    if not isinstance(settings, dict) or "port" not in settings:
        raise SetupError(f"{layout.settings} is damaged (no settings in it): restore it from a backup or move it away.")
    return settings


def save_settings(layout: Layout, settings: dict) -> None:
    """server.json (mode 0600, written whole): URIs without their passwords, which stay in DIR/secrets."""
    write_private(layout.settings, json.dumps(settings, indent=2) + "\n")


def mask_password(uri: str | None) -> str | None:
    """The URI with its password replaced by ***, for server.json, messages and logs."""
    if not uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return uri
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{location}"


def resolve_settings(args: argparse.Namespace, layout: Layout) -> dict:
    """The first `up` fixes the settings; a later one keeps them, overriding only what it is given."""
    saved = load_settings(layout)
    given = {
        "host": args.host,
        "port": args.port,
        "pg_port": args.pg_port,
        "backend_store_uri": args.backend_store_uri,
        "auth_database_uri": args.auth_database_uri,
        "artifacts_destination": args.artifacts_destination,
        "workers": args.workers,
        "auth": True if args.auth else None,
        "default_permission": args.default_permission,
        "object_store": object_store_ports() if args.object_store and not saved.get("object_store") else None,
    }
    settings = {
        "host": "127.0.0.1",
        "port": 5000,
        "pg_port": None,
        "backend_store_uri": None,
        "auth_database_uri": None,
        "artifacts_destination": str(layout.artifacts),
        "workers": 4,
        "auth": False,
        "default_permission": "NO_PERMISSIONS",
        "object_store": None,
        **saved,
        **{key: value for key, value in given.items() if value is not None},
    }
    if settings["object_store"]:
        if args.artifacts_destination:
            raise SetupError(
                "--object-store keeps the artifacts in DIR's own S3 bucket: drop --artifacts-destination "
                "(for an external S3, give --artifacts-destination s3://... without --object-store)."
            )
        settings["artifacts_destination"] = f"s3://{BUCKET}"
    if settings["backend_store_uri"] is None and settings["pg_port"] is None:
        settings["pg_port"] = free_port()
    if settings["auth"] and settings["backend_store_uri"] and not settings["auth_database_uri"]:
        raise SetupError("--auth with --backend-store-uri needs --auth-database-uri (a database for the user store).")
    for key in EXTERNAL_URIS:  # kept whole in DIR/secrets; server.json, `status` and the logs show it masked
        whole = given[key] if given[key] is not None else saved.get(key)
        if whole is not None and (given[key] is not None or mask_password(whole) != whole):  # also an older file's
            write_secret(layout.secrets / key, whole)
            settings[key] = mask_password(whole)
    return settings


def external_uri(layout: Layout, settings: dict, key: str) -> str | None:
    """An operator-given database URI with its password (from DIR/secrets), or None for the PostgreSQL in DIR."""
    if settings.get(key) is None:
        return None
    return secret(layout.secrets / key) if (layout.secrets / key).exists() else settings[key]


def url_of(settings: dict) -> str:
    host = settings["host"]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{settings['port']}"


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
