"""End-to-end fixtures: the real ``edgesync`` executable, run as subprocesses.

Every test that takes ``edgesync`` (or ``server``) runs twice: with the console
script of the installed package, and with ``dist/edgesync.pyz`` under a bare
interpreter (a venv made ``--without-pip``, so the zipapp can only use what it
carries). The zipapp is built once per session when it is missing or older than
its sources; if it cannot be built, its tests fail under CI=true (skip elsewhere).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import COMMAND_TIMEOUT, Edgesync, Server, clean_env, in_ci, start_server

ROOT = Path(__file__).resolve().parents[2]
PYZ = ROOT / "dist" / "edgesync.pyz"
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
BUILD_TIMEOUT = 600.0


@pytest.fixture(scope="session")
def installed_edgesync() -> Edgesync:
    script = Path(sys.executable).with_name("edgesync")
    argv = (str(script),) if script.exists() else (sys.executable, "-m", "edgesync")
    return Edgesync("installed", argv, clean_env())


@pytest.fixture(scope="session")
def zipapp_edgesync(tmp_path_factory: pytest.TempPathFactory) -> Edgesync:
    """``python3 dist/edgesync.pyz`` with no packages but the zipapp's own."""
    problem = _build_zipapp()
    if problem:
        if in_ci():
            pytest.fail(f"cannot build dist/edgesync.pyz under CI:\n{problem}")
        pytest.skip(f"cannot build dist/edgesync.pyz: {problem}")
    bare = tmp_path_factory.mktemp("bare-python") / "venv"
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run(
        [base, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=COMMAND_TIMEOUT
    )
    env = clean_env()
    # One extraction per session, shared by every run; the first run unpacks it.
    env["SHIV_ROOT"] = str(tmp_path_factory.mktemp("shiv-root"))
    edgesync = Edgesync("zipapp", (str(bare / "bin" / "python3"), str(PYZ)), env)
    edgesync.run("--version")
    return edgesync


def _build_zipapp() -> str:
    """Build dist/edgesync.pyz if it is missing or stale; return the problem, or ''.

    Test workers running in parallel (pytest-xdist) take turns: the first builds,
    the others then find it fresh.
    """
    PYZ.parent.mkdir(exist_ok=True)
    with open(PYZ.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_zipapp_locked()


def _build_zipapp_locked() -> str:
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "build" / "zipapp.py"), "--if-stale", "--no-smoke"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0 or not PYZ.exists():
        return result.stdout.strip()[-3000:] or "no output"
    return ""


@pytest.fixture(params=["installed", "zipapp"])
def edgesync(request: pytest.FixtureRequest) -> Edgesync:
    runner: Edgesync = request.getfixturevalue(f"{request.param}_edgesync")
    return runner


@pytest.fixture
def server(
    edgesync: Edgesync, tmp_path: Path, database_kind: str, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """``edgesync serve`` (same executable) on an ephemeral port: the folder artifact
    store, and embedded SQLite or PostgreSQL (``database_kind``, tests/conftest.py),
    the latter named by the seed's ``DATABASE_URL`` variable."""
    if database_kind != "sqlite":
        url = request.getfixturevalue("postgres").new_url(pool_max="4")
        edgesync = Edgesync(edgesync.kind, edgesync.argv, {**edgesync.env, "DATABASE_URL": url})
    running = start_server(edgesync, tmp_path, ADMIN_TOKEN)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, f"edgesync serve exited {code} on SIGTERM:\n{running.log()}"
