"""A tampered control plane hands the agent a migration its check would never have
accepted: the agent refuses it under the same rules, rolls back and acks
``MIGRATION_FAILED``; the node stays exactly on its old release.

The migration goes straight into the control plane's store (what a tampered
database or a compromised replica could do), past the API's check. Both drivers
of ``edge.db``: libsql, and the stdlib sqlite3 the aarch64 zipapp falls back to.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_support import ControlPlane, State, hello, read_db, sync_until
from aiohttp import web

from appliance.services import SERVICES
from appliance.store.records import MigrationRecord
from edgesync.protocol import format_time, utcnow

RELEASE_1 = State.want(1, hello="1.0.0")
HOSTILE = {
    "begin-commit": "/**/BEGIN;\nCREATE TABLE stray (x);\n/**/COMMIT;",
    "savepoint-commit": "CREATE TABLE stray (x);\n/**/SAVEPOINT s;\n/**/COMMIT;",
    "attach": "/**/ATTACH DATABASE '{elsewhere}' AS other;\nCREATE TABLE other.t (x);",
    "pragma": "CREATE TABLE stray (x);\nPRAGMA user_version = 99;",
    "bookkeeping": "DELETE FROM _edgesync_functions;",
    "load-extension": "CREATE TABLE stray (x);\nSELECT load_extension('{elsewhere}');",
}


@pytest.fixture(params=["libsql", "sqlite3"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "sqlite3":
        monkeypatch.setitem(sys.modules, "libsql", None)  # as on aarch64: no libsql wheel
    return str(request.param)


async def tamper(cp: ControlPlane, version: int, up_sql: str) -> None:
    """Append a migration to the store directly, past the API's check."""
    assert cp._runner is not None
    app: web.Application = cp._runner.app
    await app[SERVICES].store.add_migration(
        MigrationRecord(
            version=version,
            description="tampered",
            up_sql=up_sql,
            down_sql=None,
            checksum=hashlib.sha256(up_sql.encode()).hexdigest(),
            created_at=format_time(utcnow()),
        )
    )


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_tampered_migration_is_refused_and_acked_failed(
    control_plane: ControlPlane, make_agent: Any, tmp_path: Path, driver: str, name: str
) -> None:
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    await cp.upload("hello", "1.0.0", hello("v1"))
    agent = await make_agent("edge-1")
    assert agent.database is not None
    assert isinstance(agent.database._connection, sqlite3.Connection) == (driver == "sqlite3")
    await sync_until(cp, [agent], RELEASE_1)
    edge_db = agent.data_dir / "edge.db"
    before = read_db(edge_db)

    elsewhere = tmp_path / "elsewhere.db"
    await tamper(cp, 2, HOSTILE[name].format(elsewhere=elsewhere))
    outcome = await agent.sync_once()

    assert read_db(edge_db) == before  # schema, data and bookkeeping, byte for byte
    assert not elsewhere.exists()
    assert outcome.kind == "failed"
    assert outcome.error is not None and outcome.error.code == "MIGRATION_FAILED"
    assert outcome.error.details["reason"] == "refused"
    assert await cp.node_state(agent.node_id) == RELEASE_1
    failed = (await cp.history(agent.node_id))[0]
    assert failed["status"] == "failed" and failed["error_code"] == "MIGRATION_FAILED"
