"""DIR's own files: written whole, never through a link, refused when another user could have planted them."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from .errors import SetupError
from .layout import Layout


def write_private(path: Path, text: str) -> None:
    """Write a file whole or not at all (a temporary file renamed over it), mode 0600, never through a link."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_private(path: Path) -> str:
    """A file of DIR, refused when it is a link or another user's (it could have been planted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise SetupError(f"cannot read {path}: {error.strerror} (a link is refused: replace it by a file).") from error
    with os.fdopen(fd) as handle:
        if os.fstat(handle.fileno()).st_uid != os.geteuid():
            raise SetupError(f"{path} belongs to another user: remove it (or chown it to yourself) and run again.")
        return handle.read()


def private_folder(folder: Path) -> Path:
    """``folder`` (mode 0700) made where missing, and refused when another user could have prepared it."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    check_private_folder(folder)
    return folder


def write_secret(path: Path, text: str) -> None:
    private_folder(path.parent)
    write_private(path, text)


def secret(path: Path) -> str:
    """A generated secret kept in DIR/secrets (made on first use)."""
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(32))
    value = read_private(path).strip()
    if not value:
        raise SetupError(f"{path} is empty: remove it to have a new one generated (a database password: restore it).")
    return value


def check_private_folder(folder: Path) -> None:
    """Refuse a folder another user could have prepared or can change: theirs, a link, or writable by others."""
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"{folder} is not a folder (a link or a file): remove it, or pick another --dir.")
    if info.st_uid != os.geteuid():
        raise SetupError(
            f"{folder} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): another user may have "
            "prepared it; pick another --dir, or check its contents and chown it to yourself."
        )
    if info.st_mode & 0o022:
        raise SetupError(
            f"{folder} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}): check its contents, "
            f"then `chmod go-w {folder}`, or pick another --dir."
        )


def make_folder(layout: Layout) -> None:
    """DIR (and any missing parent) with mode 0711 whatever the umask: the postgres user must reach postgres/."""
    missing = [folder for folder in (layout.root, *layout.root.parents) if not folder.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=0o711)
            folder.chmod(0o711)
        probe = layout.root / f".write-test-{secrets.token_hex(4)}"
        probe.touch(mode=0o600)
        probe.unlink()
    except OSError as error:
        raise SetupError(
            f"cannot use {layout.root} as the server's folder: {error.strerror} ({error.filename}); "
            "pick a --dir on a writable disk that you own."
        ) from error
    check_private_folder(layout.root)
    if os.geteuid() == 0:  # the postgres user must pass through DIR to its data folder, whatever the umask was
        layout.root.chmod(stat.S_IMODE(layout.root.stat().st_mode) | 0o011)
    if layout.secrets.exists():
        check_private_folder(layout.secrets)


def tail(path: Path, lines: int = 25) -> str:
    """The end of a log of DIR, for a message that explains a failed start."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
