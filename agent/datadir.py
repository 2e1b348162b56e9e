"""The agent's data dir: private to its user, and used by one agent at a time.

It holds the node's token (``node.json``), its database (``edge.db`` and the
``-wal``/``-shm`` files SQLite adds) and the modules it runs: nothing in it is
for other users. The dir is 0700 and every file 0600 whatever the umask: files
are created with explicit modes, ``edge.db`` is created empty at 0600 before
SQLite opens it (SQLite gives ``-wal`` and ``-shm`` the database file's mode),
and modes widened by an older version or by hand are narrowed at every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from typing import IO

from edgesync.errors import EdgesyncError

LOCK_FILE = ".agent.lock"
EDGE_DB = "edge.db"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class DataDirBusy(EdgesyncError):
    code = "DATA_DIR_LOCKED"


class DatabaseUnreadable(EdgesyncError):
    code = "BAD_DATABASE"


def unreadable(database: Path, exc: Exception) -> DatabaseUnreadable:
    """``edge.db`` cannot be opened or read: say which file, and that it is not a bug."""
    reason = str(exc).strip() or type(exc).__name__
    return DatabaseUnreadable(
        f"{database} cannot be used ({reason}): restore it from a backup, or enrol the node"
        " again in an empty --data-dir"
    )


def prepare(data_dir: Path) -> None:
    """Create ``data_dir`` (0700); narrow wider modes found inside."""
    make_private_dir(data_dir)
    narrow_modes(data_dir)


def create_database(data_dir: Path) -> Path:
    """``edge.db``, created empty at 0600 (an empty file is an empty SQLite database)."""
    database = data_dir / EDGE_DB
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    return database


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` with mode 0700 for what it creates, and 0700 on ``path`` itself."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    _narrow(path, PRIVATE_DIR)


def narrow_modes(root: Path) -> None:
    """Take group and other permissions off everything under ``root`` (links untouched)."""
    _narrow(root, PRIVATE_DIR)
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            _narrow(Path(directory, name), PRIVATE_DIR)
        for name in files:
            _narrow(Path(directory, name), PRIVATE_FILE)


def _narrow(path: Path, private: int) -> None:
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_IMODE(info.st_mode) & 0o077:
            return
        # Keep the owner's bits (an executable stays executable to its owner).
        os.chmod(path, (stat.S_IMODE(info.st_mode) & 0o700) | private)
    except FileNotFoundError:
        pass  # removed meanwhile (a temporary file): nothing to protect


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (temporary file, rename), mode 0600 from its creation."""
    partial = path.with_name(f".{path.name}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


class DataDirLock:
    """An exclusive ``flock`` on ``DIR/.agent.lock``: two agents on one node's state would
    apply releases over each other. The kernel drops it when the process dies."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip()
            handle.close()
            raise DataDirBusy(
                f"another edgesync agent{f' (pid {holder})' if holder else ''} is using"
                f" {self.path.parent}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
