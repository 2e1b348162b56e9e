"""The migration rules as SQLite enforces them: whatever the spelling, refused
before anything runs; ordinary schema SQL untouched."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgesync.sqlguard import MigrationRules


@pytest.fixture
def guarded() -> Iterator[tuple[sqlite3.Connection, MigrationRules]]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    connection.execute("CREATE TABLE _edgesync_functions (name TEXT)")
    connection.execute("BEGIN")
    rules = MigrationRules()
    with rules.installed(connection):
        yield connection, rules
    connection.close()


def refused_rule(connection: sqlite3.Connection, rules: MigrationRules, sql: str) -> str:
    rules.reset()
    with pytest.raises(sqlite3.DatabaseError):
        connection.execute(sql).fetchall()
    assert rules.refusal is not None, sql
    return rules.refusal[0]


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("ATTACH DATABASE 'elsewhere.db' AS other", "ATTACH"),
        ("/**/ATTACH DATABASE ':memory:' AS other", "ATTACH"),
        ("/* a */ -- b\n attach ':memory:' as other", "ATTACH"),
        ("DETACH main", "DETACH"),
        ("/**/DETACH DATABASE other", "DETACH"),
        ("/**/BEGIN", "TRANSACTION"),
        ("/**/COMMIT", "TRANSACTION"),
        ("/**/ END TRANSACTION", "TRANSACTION"),
        ("ROLLBACK", "TRANSACTION"),
        ("/**/SAVEPOINT s", "SAVEPOINT"),
        ("RELEASE s", "SAVEPOINT"),
        ("ROLLBACK TO s", "SAVEPOINT"),
        ("PRAGMA writable_schema = 1", "PRAGMA"),
        ("/**/PRAGMA journal_mode = DELETE", "PRAGMA"),
        ("PRAGMA user_version = 7", "PRAGMA"),
        ("PRAGMA foreign_keys = OFF", "PRAGMA"),
        ("SELECT * FROM pragma_database_list", "PRAGMA"),
        ("SELECT load_extension('/tmp/x.so')", "FUNCTION"),
        ("SELECT 1 UNION ALL SELECT LOAD_EXTENSION('x')", "FUNCTION"),
        ("SELECT fts3_tokenizer('simple')", "FUNCTION"),
        ("CREATE TEMP TABLE scratch (x)", "TEMP"),
        ("CREATE TABLE temp.scratch (x)", "TEMP"),
        ("CREATE TEMP TRIGGER t AFTER INSERT ON kv BEGIN SELECT 1; END", "TEMP"),
        ("INSERT INTO _edgesync_functions VALUES ('x')", "RESERVED"),
        ("DELETE FROM _EDGESYNC_FUNCTIONS", "RESERVED"),
        ("SELECT name FROM _edgesync_functions", "RESERVED"),
        ("CREATE TABLE _edgesync_mine (x)", "RESERVED"),
        ("CREATE TRIGGER t AFTER DELETE ON _edgesync_functions BEGIN SELECT 1; END", "RESERVED"),
        ("DROP TABLE _edgesync_functions", "RESERVED"),
    ],
)
def test_refused_whatever_the_spelling(
    guarded: tuple[sqlite3.Connection, MigrationRules], sql: str, rule: str
) -> None:
    connection, rules = guarded
    assert refused_rule(connection, rules, sql) == rule
    assert connection.in_transaction


def test_vacuum_into_never_writes_a_file(tmp_path: Path) -> None:
    # Outside a transaction, so that only the rules stand in the way.
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.execute("CREATE TABLE kv (k TEXT)")
    rules = MigrationRules()
    target = tmp_path / "copy.db"
    with rules.installed(connection):
        assert refused_rule(connection, rules, f"VACUUM INTO '{target}'") == "ATTACH"
        assert refused_rule(connection, rules, "VACUUM") == "ATTACH"
    assert not target.exists()


def test_a_trigger_body_is_judged_when_it_would_run(
    guarded: tuple[sqlite3.Connection, MigrationRules],
) -> None:
    connection, rules = guarded
    connection.execute(
        "CREATE TRIGGER sneaky AFTER INSERT ON kv BEGIN DELETE FROM _edgesync_functions; END"
    )
    assert refused_rule(connection, rules, "INSERT INTO kv VALUES ('a', 'b')") == "RESERVED"


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)",
        "ALTER TABLE kv ADD COLUMN note TEXT",
        "ALTER TABLE kv RENAME TO pairs",
        "ALTER TABLE kv RENAME COLUMN v TO value",
        "CREATE UNIQUE INDEX kv_v ON kv (v)",
        "CREATE VIEW keys AS SELECT k FROM kv",
        "CREATE TRIGGER kv_log AFTER INSERT ON kv BEGIN UPDATE kv SET v = 'x' WHERE 0; END",
        "CREATE VIRTUAL TABLE docs USING fts5(body)",
        "INSERT INTO kv VALUES ('a', 'b') ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 5) SELECT * FROM n",
        "SELECT * FROM pragma_table_info('kv')",
        "PRAGMA index_list(kv)",
        "PRAGMA foreign_key_check",
        "ANALYZE",
        "DROP TABLE kv",
    ],
)
def test_ordinary_schema_sql_is_allowed(
    guarded: tuple[sqlite3.Connection, MigrationRules], sql: str
) -> None:
    connection, rules = guarded
    rules.reset()
    connection.execute(sql).fetchall()
    assert rules.refusal is None


def test_fts5_writes_are_allowed(guarded: tuple[sqlite3.Connection, MigrationRules]) -> None:
    connection, _ = guarded
    connection.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
    connection.execute("INSERT INTO docs (body) VALUES ('hello world')")
    assert connection.execute("SELECT body FROM docs WHERE docs MATCH 'hello'").fetchall()


def test_rules_hold_only_inside_the_block_and_attach_stays_impossible() -> None:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.execute("CREATE TABLE _edgesync_functions (name TEXT)")
    connection.execute("INSERT INTO _edgesync_functions VALUES ('before')")  # prepared, cached
    rules = MigrationRules()
    with rules.installed(connection):
        # The statement cache holds it already: installing the rules expired it.
        with pytest.raises(sqlite3.DatabaseError):
            connection.execute("INSERT INTO _edgesync_functions VALUES ('before')")
    connection.execute("INSERT INTO _edgesync_functions VALUES ('after')")  # the agent's own
    assert connection.execute("PRAGMA journal_mode").fetchall()
    with pytest.raises(sqlite3.OperationalError, match="too many attached"):
        connection.execute("ATTACH ':memory:' AS other")


def test_a_deadline_interrupts_an_endless_statement() -> None:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    rules = MigrationRules(deadline_seconds=0.2)
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n"
    with rules.installed(connection):
        rules.reset()
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            connection.execute(endless).fetchall()
    assert rules.timed_out and rules.refusal is None
