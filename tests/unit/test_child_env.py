"""The checkers the control plane runs as children inherit no secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.child_env import python_child_environment
from edgesync.pythonpath import child_pythonpath

SECRETS = {
    "EDGESYNC_ADMIN_TOKEN": "secret-admin-token-0123456789",
    "DATABASE_URL": "postgresql://u:secret@db/edgesync",
    "MINIO_SECRET_KEY": "secret-s3-key",
}


def test_no_server_secret_reaches_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    environment = python_child_environment(MALLOC_ARENA_MAX="2")
    assert "secret" not in repr(environment)
    assert environment["MALLOC_ARENA_MAX"] == "2"


def test_the_child_imports_the_validator_it_is_started_for() -> None:
    # The same invocation appliance.wasm_check uses for large modules.
    done = subprocess.run(
        [sys.executable, "-c", "import appliance.wasm_check, os; print(sorted(os.environ))"],
        env=python_child_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "EDGESYNC_ADMIN_TOKEN" not in done.stdout


def test_a_child_of_the_real_interpreter_finds_the_project_from_anywhere(tmp_path: Path) -> None:
    # The WasmEdge workers run the real interpreter (not the venv's), from any
    # directory: an editable install's import hook is then missing, so the
    # project's folder must be on PYTHONPATH itself.
    done = subprocess.run(
        [os.path.realpath(sys.executable), "-s", "-c", "import agent.runtime.wasmedge.worker"],
        env={"PYTHONPATH": child_pythonpath(), "PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
