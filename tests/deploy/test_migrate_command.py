"""``edgesync migrate`` (the k3s migrate Job): migrates, is safe to run again,
and a database it cannot reach is one error line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .support import ROOT

LATEST = "control-plane schema at version"


def _migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesync", "migrate", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_brings_a_database_to_the_schema_and_runs_again(tmp_path: Path) -> None:
    from appliance.store.schema import MIGRATIONS

    url = f"sqlite://{tmp_path / 'edgesync.db'}"
    for _ in range(2):
        result = _migrate("--database-url", url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{LATEST} {MIGRATIONS[-1].version}"


def test_an_unreachable_database_is_one_error_line() -> None:
    result = _migrate("--database-url", "postgresql://edgesync:hunter2@127.0.0.1:1/edgesync")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: metadata database: cannot connect to the database within 5 s (DATABASE_UNAVAILABLE)"
    ]
    assert "hunter2" not in result.stderr
