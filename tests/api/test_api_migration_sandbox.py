"""POST /api/v1/schemas against hostile SQL: the check runs in a child process under
the migration rules, so nothing reaches the server's own database, its secrets, its
event loop or its memory. The app runs in process on its embedded on-disk SQLite
store, as ``edgesync serve`` does by default."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from api_support import ADMIN, Api, api_factory, expect_error

from appliance import migration_check

ENDLESS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n;"
HUGE = (
    "CREATE TABLE scratch (blob BLOB);\n"
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 2000000)"
    " INSERT INTO scratch SELECT randomblob(1000) FROM n;"
)


@pytest.fixture
def build(aiohttp_client: Any, tmp_path: Path) -> Any:
    return api_factory(aiohttp_client, tmp_path)


async def refused(api: Api, up_sql: str, version: int = 1) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/schemas", json={"version": version, "up_sql": up_sql}, headers=ADMIN
    )
    return await expect_error(response, 400, "INVALID_MIGRATION")


def live_attacks(data_dir: Path, elsewhere: Path) -> list[str]:
    live = data_dir / "edgesync.db"
    return [
        # Read the node-token signing key into the error message.
        f"CREATE TABLE loot (x TEXT);\n/**/ATTACH DATABASE '{live}' AS live;\n"
        "INSERT INTO loot SELECT json_extract('{}', value) FROM live.secrets;",
        f"/**/ATTACH DATABASE '{live}' AS live;\nSELECT json_extract('{{}}', value)"
        " FROM live.secrets;",
        # Write into the live database; make files elsewhere.
        f"/* hi */ ATTACH '{live}' AS live;\nCREATE TABLE live.pwned (x);",
        f"-- x\n/**/ATTACH DATABASE '{elsewhere}' AS other;\nCREATE TABLE other.t (x);",
        f"CREATE TABLE t (x);\nVACUUM INTO '{elsewhere}';",
    ]


async def test_the_live_database_is_out_of_reach(build: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    api = await build(data_dir=data_dir)
    first = await api.register("before")
    elsewhere = tmp_path / "elsewhere.db"
    errors = [await refused(api, attack) for attack in live_attacks(data_dir, elsewhere)]
    second = await api.register("after")
    await api.client.close()

    live = sqlite3.connect(data_dir / "edgesync.db")
    try:
        assert live.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {row[0] for row in live.execute("SELECT name FROM sqlite_master")}
        secrets = [row[0] for row in live.execute("SELECT value FROM secrets")]
    finally:
        live.close()
    assert secrets and not any(secret in repr(error) for secret in secrets for error in errors)
    assert not {"pwned", "loot", "t"} & tables
    assert not elsewhere.exists()
    for error in errors:
        assert error["details"]["reason"] == "refused", error
        assert error["details"]["rule"] in ("ATTACH", "VACUUM")

    # A restart finds both nodes: nothing unlinked the live database's WAL.
    again = await build(data_dir=data_dir)
    for node in (first, second):
        assert (await again.node(node))["id"] == node.id
    body = await again.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert body["migrations"] == []


@pytest.mark.parametrize(
    ("up_sql", "rule"),
    [
        ("/**/BEGIN;\nCREATE TABLE t (x);\n/**/COMMIT;", "TRANSACTION"),
        ("CREATE TABLE t (x);\n/**/SAVEPOINT s;\n/**/COMMIT;", "SAVEPOINT"),
        ("PRAGMA writable_schema = ON;", "PRAGMA"),
        ("CREATE TABLE t (x);\n/**/VACUUM;", "VACUUM"),
        ("DETACH DATABASE main;", "DETACH"),
        ("SELECT load_extension('/tmp/evil.so');", "FUNCTION"),
        ("CREATE TEMP TABLE t (x);", "TEMP"),
        ("CREATE TABLE _edgesync_functions (x);", "RESERVED"),
    ],
)
async def test_statements_outside_the_rules_are_refused(build: Any, up_sql: str, rule: str) -> None:
    api = await build()
    error = await refused(api, up_sql)
    assert error["details"]["reason"] == "refused"
    assert error["details"]["rule"] == rule
    assert error["details"]["sql_error"].startswith("not authorized")


@pytest.mark.parametrize(
    "up_sql",
    [
        "CREATE TABLE t (x);\nSELECT load_extension('x');",
        "SELECT abs(-9223372036854775808);",
        "WITH v(x) AS (VALUES (1), (-9223372036854775808)) SELECT abs(x) FROM v;",
    ],
)
async def test_an_error_inside_a_select_fails_the_check(build: Any, up_sql: str) -> None:
    api = await build()
    error = await refused(api, up_sql)
    assert error["details"]["sql_error"]


async def test_an_endless_check_times_out_while_the_server_keeps_answering(
    build: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await build(migration_check_timeout=4.0)
    await api.add_schema(1, "CREATE TABLE kv (k TEXT);")
    checking = asyncio.Event()
    spawn = asyncio.create_subprocess_exec

    async def spawned(*args: Any, **kwargs: Any) -> Any:
        child = await spawn(*args, **kwargs)
        checking.set()
        return child

    monkeypatch.setattr(migration_check.asyncio, "create_subprocess_exec", spawned)
    check = asyncio.create_task(refused(api, ENDLESS, version=2))
    await checking.wait()
    # While the child spins, other requests are answered.
    assert (await api.get("/healthz")).status == 200
    listed = await api.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert [m["version"] for m in listed["migrations"]] == [1]
    assert not check.done()
    error = await check
    assert error["details"]["reason"] == "timeout"
    assert error["details"]["limit_seconds"] == 4.0
    await api.add_schema(2, "CREATE INDEX kv_k ON kv (k);")  # and the next check works


async def test_a_huge_scratch_table_hits_the_memory_limit(build: Any) -> None:
    api = await build(migration_check_memory_mb=128)
    error = await refused(api, HUGE)
    assert error["details"]["reason"] == "memory"
    await api.add_schema(1, "CREATE TABLE fine (x);")
