"""The control plane's data dir is its owner's alone, whatever the umask.

``edgesync.db`` holds both signing keys (node tokens, download URLs): the dir is
0700, the database and its ``-wal``/``-shm`` 0600, from their creation under a
permissive umask (022), and modes found wider (an older version, a hand) are
narrowed at the next start.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from .support import Edgesync, Server, _wait_healthy, free_port

PERMISSIVE_UMASK = 0o022


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def serve(edgesync: Edgesync, workdir: Path, attempt: int) -> Server:
    data_dir = workdir / "data"
    port = free_port()
    log_path = workdir / f"serve-{attempt}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *edgesync.argv,
                *("serve", "--host", "127.0.0.1", "--port", str(port)),
                *("--data-dir", str(data_dir)),
            ],
            env=edgesync.env,  # no EDGESYNC_ADMIN_TOKEN: serve writes DIR/admin-token
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            umask=PERMISSIVE_UMASK,
        )
    server = Server(f"http://127.0.0.1:{port}", "", data_dir, process, log_path)
    if not _wait_healthy(server):
        server.stop()
        pytest.fail(f"edgesync serve did not start:\n{server.log()}")
    server.admin_token = (data_dir / "admin-token").read_text().strip()
    return server


def database_files(data_dir: Path) -> list[Path]:
    return [data_dir / name for name in ("edgesync.db", "edgesync.db-wal", "edgesync.db-shm")]


def test_the_data_dir_and_database_are_private(
    installed_edgesync: Edgesync, tmp_path: Path
) -> None:
    server = serve(installed_edgesync, tmp_path, 0)
    try:
        # A write, so that the WAL holds data (an enrollment token's hash).
        created = server.request(
            "POST", "/api/v1/enrollment-tokens", {"max_uses": 1}, token=server.admin_token
        )
        assert created.status == 201, created.body
        assert mode_of(server.data_dir) == 0o700
        for path in database_files(server.data_dir):
            assert path.exists(), path
            assert mode_of(path) == 0o600, path
        assert mode_of(server.data_dir / "admin-token") == 0o600
    finally:
        assert server.stop() == 0, server.log()

    # Widened by hand (or made by an older version): narrowed at the next start.
    server.data_dir.chmod(0o755)
    for path in database_files(server.data_dir):
        if path.exists():
            path.chmod(0o644)
    server = serve(installed_edgesync, tmp_path, 1)
    try:
        assert mode_of(server.data_dir) == 0o700
        for path in database_files(server.data_dir):
            assert path.exists(), path
            assert mode_of(path) == 0o600, path
    finally:
        assert server.stop() == 0, server.log()
