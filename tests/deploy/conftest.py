"""Fixtures of the deployment tests: the manifests, and the zipapp the installer installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT, in_ci

PYZ = ROOT / "dist" / "edgesync.pyz"
BUILD_TIMEOUT = 600.0


@pytest.fixture(scope="session")
def zipapp() -> Path:
    """dist/edgesync.pyz, built (as `make zipapp` does) when missing or older than its sources.

    A zipapp that cannot be built fails the tests that need it under CI=true.
    """
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
        problem = "" if result.returncode == 0 and PYZ.exists() else result.stdout[-3000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        if in_ci():
            pytest.fail(f"cannot build dist/edgesync.pyz under CI:\n{problem}")
        pytest.skip(f"cannot build dist/edgesync.pyz: {problem}")
    return PYZ
