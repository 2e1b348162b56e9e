"""Schema migrations: append-only by one, checked by applying the chain (and with a
down_sql, down and up again), linted for destructive statements."""

from __future__ import annotations

import hashlib

import pytest
from api_support import ADMIN, Api, expect_error


async def test_add_and_list_migrations(api: Api) -> None:
    up = "CREATE TABLE users (id INTEGER PRIMARY KEY);"
    created = await api.add_schema(1, up, description="users", down_sql="DROP TABLE users;")
    assert created["version"] == 1
    assert created["description"] == "users"
    assert created["up_sql"] == up and created["down_sql"] == "DROP TABLE users;"
    assert created["checksum"] == hashlib.sha256(up.encode()).hexdigest()
    await api.add_schema(2, "ALTER TABLE users ADD COLUMN email TEXT;")
    await api.add_schema(3, "CREATE INDEX idx_email ON users (email);")
    node = await api.register()
    for headers in (ADMIN, node.headers):
        body = await api.json("GET", "/api/v1/schemas", headers=headers)
        assert [m["version"] for m in body["migrations"]] == [1, 2, 3]
    assert body["migrations"][0] == created


@pytest.mark.parametrize("version", [2, 3, 100])
async def test_version_must_be_next_first(api: Api, version: int) -> None:
    response = await api.post(
        "/api/v1/schemas", json={"version": version, "up_sql": "SELECT 1;"}, headers=ADMIN
    )
    error = await expect_error(response, 409, "SCHEMA_VERSION_CONFLICT")
    assert error["details"]["expected_version"] == 1


async def test_version_conflicts_after_the_first(api: Api) -> None:
    await api.add_schema(1, "CREATE TABLE a (x INTEGER);")
    await api.add_schema(2, "CREATE TABLE b (x INTEGER);")
    for version in (1, 2, 4):
        response = await api.post(
            "/api/v1/schemas",
            json={"version": version, "up_sql": "CREATE TABLE c (x INTEGER);"},
            headers=ADMIN,
        )
        error = await expect_error(response, 409, "SCHEMA_VERSION_CONFLICT")
        assert error["details"]["expected_version"] == 3
    body = await api.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert [m["up_sql"] for m in body["migrations"]] == [
        "CREATE TABLE a (x INTEGER);",
        "CREATE TABLE b (x INTEGER);",
    ]


async def test_concurrent_appends_of_one_version(api: Api) -> None:
    import asyncio

    responses = await asyncio.gather(
        *(
            api.post(
                "/api/v1/schemas",
                json={"version": 1, "up_sql": f"CREATE TABLE t{i} (x INTEGER);"},
                headers=ADMIN,
            )
            for i in range(5)
        )
    )
    assert sorted(r.status for r in responses) == [201, 409, 409, 409, 409]
    for response in responses:
        if response.status == 409:
            await expect_error(response, 409, "SCHEMA_VERSION_CONFLICT")


@pytest.mark.parametrize(
    ("up_sql", "fragment"),
    [
        ("CREAT TABLE t (x INTEGER);", "syntax"),
        ("ALTER TABLE missing ADD COLUMN y TEXT;", "missing"),
        ("CREATE TABLE t (x INTEGER);\nINSERT INTO nope VALUES (1);", "nope"),
    ],
)
async def test_invalid_migration_has_sql_error(api: Api, up_sql: str, fragment: str) -> None:
    response = await api.post(
        "/api/v1/schemas", json={"version": 1, "up_sql": up_sql}, headers=ADMIN
    )
    error = await expect_error(response, 400, "INVALID_MIGRATION")
    assert fragment in error["details"]["sql_error"]
    body = await api.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert body["migrations"] == []


async def test_migration_is_checked_against_the_whole_chain(api: Api) -> None:
    await api.add_schema(1, "CREATE TABLE users (id INTEGER PRIMARY KEY);")
    response = await api.post(
        "/api/v1/schemas",
        json={"version": 2, "up_sql": "CREATE TABLE users (id INTEGER);"},
        headers=ADMIN,
    )
    error = await expect_error(response, 400, "INVALID_MIGRATION")
    assert "users" in error["details"]["sql_error"]
    ok = await api.add_schema(2, "ALTER TABLE users ADD COLUMN name TEXT;")
    assert ok["version"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"up_sql": "SELECT 1;"},
        {"version": 0, "up_sql": "SELECT 1;"},
        {"version": -1, "up_sql": "SELECT 1;"},
        {"version": "1", "up_sql": "SELECT 1;"},
        {"version": True, "up_sql": "SELECT 1;"},
        {"version": 1.0, "up_sql": "SELECT 1;"},
        {"version": 1},
        {"version": 1, "up_sql": ""},
        {"version": 1, "up_sql": "   "},
        {"version": 1, "up_sql": ["SELECT 1;"]},
        {"version": 1, "up_sql": "SELECT 1;", "description": 5},
        {"version": 1, "up_sql": "SELECT 1;", "down_sql": 5},
        {"version": 1, "up_sql": "SELECT 1;", "down_sql": "  "},
        {"version": 1, "up_sql": "SELECT 1;", "allow_destructive": "yes"},
        {"version": 1, "up_sql": "SELECT 1;", "allow_destructive": 1},
    ],
)
async def test_migration_validation_failed(api: Api, body: dict[str, object]) -> None:
    response = await api.post("/api/v1/schemas", json=body, headers=ADMIN)
    await expect_error(response, 400, "VALIDATION_FAILED")


async def test_comment_only_migration_is_invalid(api: Api) -> None:
    response = await api.post(
        "/api/v1/schemas", json={"version": 1, "up_sql": "-- nothing here"}, headers=ADMIN
    )
    error = await expect_error(response, 400, "INVALID_MIGRATION")
    assert error["details"]["sql_error"]


async def test_destructive_statements_are_refused_with_each_listed(api: Api) -> None:
    await api.add_schema(1, "CREATE TABLE t (a, b);\nCREATE TABLE log (line);")
    up_sql = (
        "-- a rewrite\nCREATE TABLE t2 (a);\n"
        'drop table "t";\n'
        "ALTER TABLE t2 RENAME TO t;\n"
        "DELETE FROM log WHERE 1;\n"
        "WITH x(n) AS (VALUES (1)) UPDATE log SET line = NULL;"
    )
    response = await api.post(
        "/api/v1/schemas", json={"version": 2, "up_sql": up_sql}, headers=ADMIN
    )
    error = await expect_error(response, 400, "DESTRUCTIVE_MIGRATION")
    statements = error["details"]["statements"]
    assert [(s["index"], s["kind"]) for s in statements] == [
        (1, "drop"),
        (2, "rename_table"),
        (4, "update_without_where"),
    ]
    assert statements[0]["statement"] == 'drop table "t";' and statements[0]["reason"]
    assert error["details"]["version"] == 2
    assert "statement 1: drop, statement 2: rename_table, statement 4:" in error["message"]
    listed = await api.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert [m["version"] for m in listed["migrations"]] == [1]

    accepted = await api.add_schema(2, up_sql, allow_destructive=True)
    assert accepted["version"] == 2


async def test_an_invalid_destructive_migration_is_invalid_first(api: Api) -> None:
    response = await api.post(
        "/api/v1/schemas", json={"version": 1, "up_sql": "DROP TABLE missing;"}, headers=ADMIN
    )
    error = await expect_error(response, 400, "INVALID_MIGRATION")
    assert "missing" in error["details"]["sql_error"]


async def test_down_sql_is_not_linted_and_must_undo_up(api: Api) -> None:
    up = "CREATE TABLE t (a);\nCREATE INDEX t_a ON t (a);"
    created = await api.add_schema(1, up, down_sql="DROP INDEX t_a;\nDROP TABLE t;")
    assert created["down_sql"] == "DROP INDEX t_a;\nDROP TABLE t;"


@pytest.mark.parametrize(
    ("down_sql", "phase", "fragment"),
    [
        ("DROP TABLE nope;", "down", "nope"),  # does not apply after up
        ("DROP INDEX t_a;", "up_again", "already exists"),  # leaves t: up cannot run again
        ("SELECT 1;\n/**/COMMIT;", "down", "transaction"),  # the same rules as up_sql
        ("-- nothing", "down", "empty"),
    ],
)
async def test_down_sql_is_checked_up_down_up(
    api: Api, down_sql: str, phase: str, fragment: str
) -> None:
    await api.add_schema(1, "CREATE TABLE keep (x);")
    up = "CREATE TABLE t (a);\nCREATE INDEX t_a ON t (a);"
    response = await api.post(
        "/api/v1/schemas",
        json={"version": 2, "up_sql": up, "down_sql": down_sql},
        headers=ADMIN,
    )
    error = await expect_error(response, 400, "INVALID_MIGRATION")
    details = error["details"]
    assert details["phase"] == phase and details["version"] == 2
    assert fragment in details["sql_error"] + details["reason"]
    assert f"({phase})" in error["message"]
    listed = await api.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert [m["version"] for m in listed["migrations"]] == [1]


async def test_the_message_names_the_first_findings_and_counts_the_rest(api: Api) -> None:
    await api.add_schema(1, "".join(f"CREATE TABLE t{i} (x);\n" for i in range(5)))
    up_sql = "".join(f"DROP TABLE t{i};\n" for i in range(5))
    response = await api.post(
        "/api/v1/schemas", json={"version": 2, "up_sql": up_sql}, headers=ADMIN
    )
    error = await expect_error(response, 400, "DESTRUCTIVE_MIGRATION")
    assert len(error["details"]["statements"]) == 5
    assert "statement 0: drop, statement 1: drop, statement 2: drop, 2 more)" in error["message"]
    assert "--allow-destructive" in error["message"]
