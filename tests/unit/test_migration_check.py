"""A migration is accepted only if the whole chain applies to a scratch database,
within the migration rules, in a child process with time and memory limits."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import pytest

from appliance import migration_check
from appliance.migration_check import CheckLimits, check_chain
from appliance.migration_sandbox import verify_chain
from edgesync.errors import InvalidMigration
from edgesync.sqlrunner import ScriptFailed

ENDLESS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n;"
HUGE = (
    "CREATE TABLE scratch (blob BLOB);\n"
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 2000000)"
    " INSERT INTO scratch SELECT randomblob(1000) FROM n;"
)


def check(accepted: Sequence[str], candidate: str) -> None:
    """The child's work, in process: raises ScriptFailed like the child reports it."""
    chain = list(enumerate([*accepted, candidate], start=1))
    verify_chain(chain)


def failure(accepted: Sequence[str], candidate: str) -> ScriptFailed:
    with pytest.raises(ScriptFailed) as caught:
        check(accepted, candidate)
    return caught.value


def test_first_migration_applies() -> None:
    check([], "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);")


def test_candidate_builds_on_the_accepted_chain() -> None:
    accepted = [
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
        "ALTER TABLE users ADD COLUMN email TEXT;",
    ]
    check(accepted, "CREATE INDEX idx_users_email ON users (email);")


def test_multi_statement_migration_with_trigger_and_strings() -> None:
    check(
        [],
        """
        -- a comment; with a semicolon
        CREATE TABLE t (x INTEGER, note TEXT DEFAULT 'a;b');
        CREATE TABLE log (x INTEGER);
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
            INSERT INTO log VALUES (NEW.x);
            INSERT INTO log VALUES (NEW.x + 1);
        END;
        INSERT INTO t (x) VALUES (1);
        """,
    )


def test_ordinary_schema_work_passes_on_both_engines() -> None:
    check(
        [
            "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, old TEXT);",
            "CREATE VIRTUAL TABLE notes USING fts5(body);\n"
            "CREATE VIEW named AS SELECT id, name FROM users WHERE name IS NOT NULL;",
        ],
        """
        ALTER TABLE users RENAME COLUMN name TO full_name;
        ALTER TABLE users DROP COLUMN old;
        ALTER TABLE users ADD COLUMN email TEXT;
        CREATE UNIQUE INDEX users_email ON users (email);
        CREATE TRIGGER users_note AFTER INSERT ON users BEGIN
            INSERT INTO notes (body) VALUES ('new user; ' || NEW.full_name);
        END;
        INSERT INTO users (full_name, email) VALUES ('a', 'a@x') ON CONFLICT DO NOTHING;
        WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 10)
            INSERT INTO users (full_name) SELECT 'user ' || x FROM n;
        SELECT * FROM notes WHERE notes MATCH 'user';
        SELECT * FROM pragma_table_info('users');
        ANALYZE;
        ALTER TABLE users RENAME TO people;
        """,
    )


def test_syntax_error_is_refused_with_sql_error() -> None:
    error = failure([], "CREATE TABLE t (x INTEGER);\nCREAT TABLE u (y INTEGER);")
    assert error.details["sql_error"] and error.details["reason"] == "sql_error"
    assert error.details["statement_index"] == 1 and error.details["version"] == 1


def test_migration_that_needs_a_missing_table_is_refused() -> None:
    assert "nowhere" in failure([], "ALTER TABLE nowhere ADD COLUMN x INTEGER;").sql_error


def test_migration_conflicting_with_the_chain_is_refused() -> None:
    error = failure(["CREATE TABLE users (id INTEGER PRIMARY KEY);"], "CREATE TABLE users (id);")
    assert "users" in error.sql_error and error.version == 2


def test_failure_in_a_later_statement_is_caught() -> None:
    """libsql's executescript would swallow this; statement by statement it surfaces."""
    script = "CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES (1);\nINSERT INTO b VALUES (2);"
    assert failure([], script).statement_index == 2


def test_constraint_failure_is_refused() -> None:
    script = (
        "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
        "INSERT INTO u (name) VALUES ('a');"
        "INSERT INTO u (name) VALUES ('a');"
    )
    assert "UNIQUE" in failure([], script).sql_error


@pytest.mark.parametrize("script", ["", "   ", "-- only a comment", ";;"])
def test_empty_migration_is_refused(script: str) -> None:
    error = failure([], script)
    assert error.sql_error and error.reason == "empty"


def test_each_check_starts_from_a_fresh_scratch_database() -> None:
    check([], "CREATE TABLE once (x INTEGER);")
    check([], "CREATE TABLE once (x INTEGER);")


@pytest.mark.parametrize(
    ("statement", "rule"),
    [
        ("ATTACH DATABASE '/tmp/elsewhere.db' AS other;", "ATTACH"),
        ("/**/ATTACH DATABASE '/tmp/elsewhere.db' AS other;", "ATTACH"),
        ("VACUUM INTO '/tmp/copy.db';", "VACUUM"),
        ("BEGIN;", "TRANSACTION"),
        ("/**/COMMIT;", "TRANSACTION"),
        ("-- a comment first\nSAVEPOINT s;", "SAVEPOINT"),
        ("/* hidden */ SAVEPOINT s;", "SAVEPOINT"),
        ("PRAGMA writable_schema = ON;", "PRAGMA"),
        ("SELECT load_extension('/tmp/x.so');", "FUNCTION"),
        ("CREATE TEMP TABLE t2 (x);", "TEMP"),
        ("CREATE TABLE _edgesync_functions (x);", "RESERVED"),
    ],
)
def test_statements_that_escape_the_release_are_refused(statement: str, rule: str) -> None:
    error = failure([], f"CREATE TABLE t (x);\n{statement}")
    assert error.reason == "refused" and error.rule == rule
    assert error.sql_error.startswith("not authorized")
    assert error.statement_index == 1


def test_a_refused_statement_in_an_accepted_migration_names_its_version() -> None:
    """Migrations accepted before the rules existed are held to them too."""
    error = failure(["CREATE TABLE t (x);", "PRAGMA foreign_keys = ON;"], "SELECT 1;")
    assert error.version == 2 and error.rule == "PRAGMA"


# -- the child process --------------------------------------------------------------------


async def test_the_child_accepts_a_good_chain_and_explains_a_bad_one() -> None:
    await check_chain([(1, "CREATE TABLE t (x);"), (2, "INSERT INTO t VALUES (1);")], CheckLimits())
    with pytest.raises(InvalidMigration) as caught:
        await check_chain([(1, "CREATE TABLE t (x);"), (2, "/**/COMMIT;")], CheckLimits())
    assert caught.value.code == "INVALID_MIGRATION" and caught.value.status == 400
    details = caught.value.details
    assert details["reason"] == "refused" and details["rule"] == "TRANSACTION"
    assert details["version"] == 2 and details["statement_index"] == 0


async def test_errors_inside_a_select_fail_the_check() -> None:
    for sql in ("SELECT load_extension('x');", "SELECT abs(-9223372036854775808);"):
        with pytest.raises(InvalidMigration):
            await check_chain([(1, sql)], CheckLimits())


async def test_an_endless_statement_is_killed_at_the_time_limit() -> None:
    with pytest.raises(InvalidMigration) as caught:
        await check_chain([(1, ENDLESS)], CheckLimits(timeout_seconds=1.0))
    assert caught.value.details["reason"] == "timeout"
    assert caught.value.details["limit_seconds"] == 1.0


async def test_a_huge_scratch_table_hits_the_memory_limit() -> None:
    with pytest.raises(InvalidMigration) as caught:
        await check_chain([(1, HUGE)], CheckLimits(timeout_seconds=60.0))
    assert caught.value.details["reason"] == "memory"


async def test_a_cancelled_check_leaves_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    children: list[Any] = []
    spawned = asyncio.Event()
    spawn = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> Any:
        children.append(await spawn(*args, **kwargs))
        spawned.set()
        return children[-1]

    monkeypatch.setattr(migration_check.asyncio, "create_subprocess_exec", recording)
    task = asyncio.create_task(check_chain([(1, ENDLESS)], CheckLimits(timeout_seconds=60.0)))
    await spawned.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children[0].returncode == -signal.SIGKILL


def test_the_child_gets_no_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESYNC_ADMIN_TOKEN", "secret-admin-token-0123456789")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db/edgesync")
    environment = migration_check._child_environment()
    allowed = {"PYTHONPATH", "PATH", "LANG", "MALLOC_ARENA_MAX", "PYTHONHOME", "LD_LIBRARY_PATH"}
    assert set(environment) <= allowed
    assert "secret" not in repr(environment)
    assert environment["PYTHONPATH"]  # the child finds edgesync where this process did


@pytest.mark.parametrize(
    ("returncode", "stderr", "reason"),
    [
        (-signal.SIGXCPU, b"", "timeout"),
        (-signal.SIGABRT, b"memory allocation of 1048576 bytes failed\n", "memory"),
        (1, b"Traceback (most recent call last):\nMemoryError\n", "memory"),
        (-signal.SIGSEGV, b"", "crashed"),
    ],
)
def test_a_child_that_dies_is_explained(returncode: int, stderr: bytes, reason: str) -> None:
    with pytest.raises(InvalidMigration) as caught:
        migration_check._judge(returncode, b"", stderr, CheckLimits())
    assert caught.value.details["reason"] == reason


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr"),
    [
        (1, b"", b"ModuleNotFoundError: No module named 'appliance'\n"),
        (0, b"not json", b""),
    ],
)
def test_a_checker_that_cannot_run_is_the_servers_fault(
    returncode: int, stdout: bytes, stderr: bytes
) -> None:
    """Not a 400 blaming the migration: an internal error (500, logged)."""
    with pytest.raises(RuntimeError):
        migration_check._judge(returncode, stdout, stderr, CheckLimits())


async def test_at_most_a_few_checks_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    children: list[Any] = []
    most = 0
    spawn = asyncio.create_subprocess_exec

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal most
        children.append(await spawn(*args, **kwargs))
        most = max(most, sum(child.returncode is None for child in children))
        return children[-1]

    monkeypatch.setattr(migration_check.asyncio, "create_subprocess_exec", counting)
    checks = [check_chain([(1, ENDLESS)], CheckLimits(timeout_seconds=1.0)) for _ in range(4)]
    outcomes = await asyncio.gather(*checks, return_exceptions=True)
    assert all(isinstance(outcome, InvalidMigration) for outcome in outcomes)
    assert len(children) == 4 and most == migration_check.CONCURRENT_CHECKS


# -- down_sql and the lint ----------------------------------------------------------------

UP = "CREATE TABLE t (a);\nCREATE INDEX t_a ON t (a);"


@pytest.mark.parametrize(
    ("down_sql", "phase", "index"),
    [
        ("DROP INDEX t_a;\nDROP TABLE nope;", "down", 1),
        ("DROP INDEX t_a;", "up_again", 0),  # t is left behind: up cannot run again
        ("DROP TABLE t;\nPRAGMA user_version = 3;", "down", 1),  # the same rules
    ],
)
def test_the_chain_must_go_up_down_and_up_again(down_sql: str, phase: str, index: int) -> None:
    verify_chain([(1, "CREATE TABLE keep (x);"), (2, UP)], "DROP TABLE t;")
    with pytest.raises(ScriptFailed) as caught:
        verify_chain([(1, "CREATE TABLE keep (x);"), (2, UP)], down_sql)
    failed = caught.value
    assert (failed.phase, failed.version, failed.statement_index) == (phase, 2, index)
    assert failed.details["phase"] == phase and failed.message.startswith(f"migration 2 ({phase})")


async def test_the_child_checks_down_sql_and_lints_up_sql() -> None:
    chain = [(1, "CREATE TABLE t (a);"), (2, "DELETE FROM t;\nDROP TABLE t;")]
    findings = await check_chain(chain, CheckLimits(), lint=True)
    assert [(f["index"], f["kind"]) for f in findings] == [
        (0, "delete_without_where"),
        (1, "drop"),
    ]
    assert await check_chain(chain, CheckLimits()) == []  # allow_destructive: no lint
    with pytest.raises(InvalidMigration) as caught:
        await check_chain(chain, CheckLimits(), down_sql="DROP TABLE nope;", lint=True)
    assert caught.value.details["phase"] == "down"
