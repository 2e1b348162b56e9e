"""The one migration runner, on both engines: the stdlib sqlite3 under the rules'
authorizer, and libsql (no authorizer) checked through compiled programs and after
every statement. Errors surface, SELECTs included."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import libsql
import pytest

from edgesync.sqlguard import MigrationRules
from edgesync.sqlrunner import SQL_ERROR_LIMIT, ScriptFailed, dry_run, run_chain, run_script


@pytest.fixture(params=["sqlite3", "libsql"])
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[Any, MigrationRules | None]]:
    """A connection inside a transaction, and the rules when the engine has an authorizer."""
    if request.param == "sqlite3":
        connection: Any = sqlite3.connect(":memory:", isolation_level=None)
        connection.execute("BEGIN")
        rules = MigrationRules()
        with rules.installed(connection):
            yield connection, rules
    else:
        connection = libsql.connect(":memory:")
        connection.execute("BEGIN")
        yield connection, None
    connection.close()


def failure_of(engine: tuple[Any, MigrationRules | None], script: str) -> ScriptFailed:
    connection, rules = engine
    with pytest.raises(ScriptFailed) as caught:
        run_script(connection, script, rules=rules)
    assert connection.in_transaction, "a refused statement must leave the transaction open"
    return caught.value


@pytest.mark.parametrize(
    ("script", "rule"),
    [
        ("CREATE TABLE stray (x);\n/**/COMMIT;", "TRANSACTION"),
        ("/**/BEGIN;", "TRANSACTION"),
        ("/**/END;", "TRANSACTION"),
        ("/**/SAVEPOINT s;\n/**/COMMIT;", "SAVEPOINT"),
        ("/**/RELEASE s;", "SAVEPOINT"),
        ("/**/ATTACH DATABASE ':memory:' AS other;", "ATTACH"),
        ("DETACH DATABASE main;", "DETACH"),
        ("/**/VACUUM;", "VACUUM"),
        ("SELECT load_extension('x');", "FUNCTION"),
        ("SELECT 1 UNION ALL SELECT load_extension('x');", "FUNCTION"),
    ],
)
def test_refused_before_it_runs(
    engine: tuple[Any, MigrationRules | None], script: str, rule: str
) -> None:
    failure = failure_of(engine, script)
    assert failure.reason == "refused" and failure.rule == rule
    assert failure.sql_error.startswith("not authorized")


@pytest.mark.parametrize(
    ("script", "fragment"),
    [
        ("SELECT abs(-9223372036854775808);", "integer overflow"),
        # The error is in the third row: only fetching every row surfaces it.
        (
            "WITH v(x) AS (VALUES (1), (2), (-9223372036854775808)) SELECT abs(x) FROM v;",
            "integer overflow",
        ),
        ("CREATE TABLE a (x);\nINSERT INTO nowhere VALUES (1);", "nowhere"),
        ("CREAT TABLE a (x);", "syntax error"),
    ],
)
def test_errors_surface_selects_included(
    engine: tuple[Any, MigrationRules | None], script: str, fragment: str
) -> None:
    failure = failure_of(engine, script)
    assert failure.reason == "sql_error"
    assert fragment in failure.sql_error


def test_a_script_applies_in_order(engine: tuple[Any, MigrationRules | None]) -> None:
    connection, rules = engine
    script = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    INSERT INTO notes (body) VALUES ('a;b');
    CREATE INDEX notes_body ON notes (body);
    SELECT * FROM notes;
    """
    assert run_script(connection, script, rules=rules) == 4
    assert connection.execute("SELECT body FROM notes").fetchall() == [("a;b",)]


def test_empty_script_fails(engine: tuple[Any, MigrationRules | None]) -> None:
    failure = failure_of(engine, "-- nothing\n;")
    assert failure.reason == "empty"


def test_a_long_error_is_truncated(engine: tuple[Any, MigrationRules | None]) -> None:
    failure = failure_of(engine, f"SELECT json_extract('{{}}', '{'x' * 5000}');")
    assert len(failure.sql_error) <= SQL_ERROR_LIMIT
    assert failure.details["sql_error"] == failure.sql_error


def test_libsql_after_the_fact_checks_catch_what_its_program_hides() -> None:
    """A temporary object shows in no forbidden instruction; the runner sees it after."""
    connection = libsql.connect(":memory:")
    connection.execute("BEGIN")
    with pytest.raises(ScriptFailed) as caught:
        run_script(connection, "CREATE TEMP TABLE scratch (x);")
    assert caught.value.rule == "TEMP"


def test_the_runner_needs_a_transaction() -> None:
    with pytest.raises(RuntimeError):
        run_script(sqlite3.connect(":memory:", isolation_level=None), "SELECT 1;")


def test_run_chain_names_the_failing_version(engine: tuple[Any, MigrationRules | None]) -> None:
    connection, rules = engine
    with pytest.raises(ScriptFailed) as caught:
        run_chain(connection, [(1, "CREATE TABLE a (x);"), (2, "/**/COMMIT;")], rules=rules)
    assert caught.value.details["version"] == 2
    assert caught.value.details["statement_index"] == 0


def test_dry_run_builds_on_a_copied_schema_with_virtual_tables() -> None:
    source = sqlite3.connect(":memory:")
    source.execute("CREATE TABLE kv (k TEXT, v TEXT)")
    source.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
    source.execute("CREATE INDEX kv_v ON kv (v)")
    schema = source.execute(
        "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
    ).fetchall()
    dry_run(schema, [(2, "ALTER TABLE kv ADD COLUMN n INTEGER;\nINSERT INTO docs VALUES ('x');")])
    with pytest.raises(ScriptFailed) as caught:
        dry_run(schema, [(2, "CREATE TABLE kv (x);")])
    assert "already exists" in caught.value.sql_error and caught.value.version == 2


def test_dry_run_stops_an_endless_statement_at_its_deadline() -> None:
    endless = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n;"
    )
    with pytest.raises(ScriptFailed) as caught:
        dry_run([], [(1, endless)], deadline_seconds=0.2)
    assert caught.value.reason == "timeout"


def test_dry_run_refuses_a_schema_it_cannot_copy() -> None:
    with pytest.raises(ScriptFailed) as caught:
        dry_run([("odd", "CREATE VIRTUAL TABLE odd USING nosuchmodule(x)")], [(1, "SELECT 1;")])
    assert caught.value.reason == "schema"
