"""A migration is accepted only if the whole chain applies to a scratch database."""

from __future__ import annotations

import pytest

from appliance.migration_check import check_chain
from edgesync.errors import InvalidMigration


def test_first_migration_applies() -> None:
    check_chain([], "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);")


def test_candidate_builds_on_the_accepted_chain() -> None:
    accepted = [
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
        "ALTER TABLE users ADD COLUMN email TEXT;",
    ]
    check_chain(accepted, "CREATE INDEX idx_users_email ON users (email);")


def test_multi_statement_migration_with_trigger_and_strings() -> None:
    check_chain(
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


def test_syntax_error_is_refused_with_sql_error() -> None:
    with pytest.raises(InvalidMigration) as caught:
        check_chain([], "CREATE TABLE t (x INTEGER);\nCREAT TABLE u (y INTEGER);")
    error = caught.value
    assert error.status == 400 and error.code == "INVALID_MIGRATION"
    assert error.details["sql_error"]
    assert error.details["statement_index"] == 1


def test_migration_that_needs_a_missing_table_is_refused() -> None:
    with pytest.raises(InvalidMigration) as caught:
        check_chain([], "ALTER TABLE nowhere ADD COLUMN x INTEGER;")
    assert "nowhere" in caught.value.details["sql_error"]


def test_migration_conflicting_with_the_chain_is_refused() -> None:
    accepted = ["CREATE TABLE users (id INTEGER PRIMARY KEY);"]
    with pytest.raises(InvalidMigration) as caught:
        check_chain(accepted, "CREATE TABLE users (id INTEGER);")
    assert "users" in caught.value.details["sql_error"]


def test_failure_in_a_later_statement_is_caught() -> None:
    """libsql's executescript would swallow this; statement by statement it surfaces."""
    script = "CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES (1);\nINSERT INTO b VALUES (2);"
    with pytest.raises(InvalidMigration) as caught:
        check_chain([], script)
    assert caught.value.details["statement_index"] == 2


def test_constraint_failure_is_refused() -> None:
    script = (
        "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
        "INSERT INTO u (name) VALUES ('a');"
        "INSERT INTO u (name) VALUES ('a');"
    )
    with pytest.raises(InvalidMigration):
        check_chain([], script)


@pytest.mark.parametrize("script", ["", "   ", "-- only a comment", ";;"])
def test_empty_migration_is_refused(script: str) -> None:
    with pytest.raises(InvalidMigration) as caught:
        check_chain([], script)
    assert caught.value.details["sql_error"]


def test_each_check_starts_from_a_fresh_scratch_database() -> None:
    check_chain([], "CREATE TABLE once (x INTEGER);")
    check_chain([], "CREATE TABLE once (x INTEGER);")


@pytest.mark.parametrize(
    "statement",
    [
        "ATTACH DATABASE '/tmp/elsewhere.db' AS other;",
        "VACUUM INTO '/tmp/copy.db';",
        "BEGIN;",
        "COMMIT;",
        "-- a comment first\nSAVEPOINT s;",
    ],
)
def test_statements_that_escape_the_release_transaction_are_refused(statement: str) -> None:
    with pytest.raises(InvalidMigration) as caught:
        check_chain([], f"CREATE TABLE t (x);\n{statement}")
    assert "not allowed" in caught.value.details["sql_error"]
    assert caught.value.details["statement_index"] == 1
