"""The destructive-change lint (appliance/migration_lint.py): what it refuses, and what not."""

from __future__ import annotations

import pytest

from appliance.migration_lint import STATEMENT_LIMIT, lint


def kinds(up_sql: str) -> list[tuple[int, str]]:
    return [(finding.index, finding.kind) for finding in lint(up_sql)]


@pytest.mark.parametrize(
    ("up_sql", "kind"),
    [
        ("DROP TABLE t;", "drop"),
        ("drop table if exists t;", "drop"),
        ("DROP VIEW v;", "drop"),
        ("DROP INDEX i;", "drop"),
        ("DROP TRIGGER tr;", "drop"),
        ("DROP TABLE main.t;", "drop"),
        ('DROP TABLE "my table";', "drop"),
        ("DROP TABLE [t];", "drop"),
        ("DROP TABLE `t`;", "drop"),
        ("ALTER TABLE t DROP COLUMN c;", "drop_column"),
        ('alter table "t" drop "c";', "drop_column"),
        ("ALTER TABLE t DROP c;", "drop_column"),  # COLUMN is optional in SQLite
        ("UPDATE OR REPLACE t SET x = 1 WHERE x = 2;", "not_understood"),
        ("CREATE TRIGGER tr AFTER INSERT ON t DELETE FROM u;", "not_understood"),  # no BEGIN
        (
            "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; END;",
            "delete_without_where",
        ),
        ("ALTER TABLE t RENAME TO u;", "rename_table"),
        ("ALTER TABLE main.t RENAME TO u;", "rename_table"),
        ("DELETE FROM t;", "delete_without_where"),
        ("delete from t returning *;", "delete_without_where"),
        ("UPDATE t SET x = 1;", "update_without_where"),
        ("UPDATE t SET x=1", "update_without_where"),  # no spaces, no semicolon
        ("UPDATE t SET x = 1 FROM u;", "update_without_where"),
        ("WITH c AS (SELECT 1) DELETE FROM t;", "delete_without_where"),
        ("WITH c AS (SELECT 1) UPDATE t SET x = (SELECT * FROM c);", "update_without_where"),
        ("-- clean up\nDROP TABLE t;", "drop"),
        ("/* harmless? */ DROP TABLE t;", "drop"),
        ("/* a */ -- b\n  DeLeTe FrOm t;", "delete_without_where"),
    ],
)
def test_every_destructive_form_is_found(up_sql: str, kind: str) -> None:
    assert kinds(up_sql) == [(0, kind)]


@pytest.mark.parametrize(
    "up_sql",
    [
        "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL DEFAULT 'x') STRICT;",
        "CREATE TABLE t2 AS SELECT * FROM t;",
        "CREATE UNIQUE INDEX IF NOT EXISTS i ON t (a COLLATE NOCASE DESC) WHERE a > 0;",
        "CREATE VIEW v AS SELECT a FROM t;",
        "CREATE VIRTUAL TABLE docs USING fts5(body);",
        "ALTER TABLE t ADD COLUMN c TEXT;",
        "ALTER TABLE t RENAME COLUMN a TO b;",  # data kept; see the module's note
        "DELETE FROM t WHERE 1;",  # an explicit WHERE is a decision: allowed
        "DELETE FROM t WHERE id IN (SELECT id FROM u);",
        "UPDATE t SET x = 1 WHERE x IS NULL;",
        "INSERT OR REPLACE INTO t VALUES (1);",
        "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b;",
        "INSERT INTO t SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM t);",
        "SELECT 'DROP TABLE t; DELETE FROM t';",  # inside a string literal
        '-- DROP TABLE t;\nCREATE TABLE "DELETE FROM t" (x);',
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u WHERE u.id = new.id; END;",
    ],
)
def test_additive_statements_pass(up_sql: str) -> None:
    assert lint(up_sql) == []


def test_each_destructive_statement_of_a_script_is_listed_with_its_index() -> None:
    script = (
        "CREATE TABLE new_t (a);\n"
        "INSERT INTO new_t SELECT a FROM t;\n"
        "DROP TABLE t;\n"
        "ALTER TABLE new_t RENAME TO t;\n"
        "UPDATE t SET a = 0 WHERE a IS NULL;\n"
        "DELETE FROM log;"
    )
    assert kinds(script) == [(2, "drop"), (3, "rename_table"), (5, "delete_without_where")]


def test_a_trigger_body_is_linted_statement_by_statement() -> None:
    trigger = (
        "CREATE TRIGGER keep_latest AFTER INSERT ON events"
        " WHEN (CASE WHEN new.kind = 'x' THEN 1 END)\n"
        "BEGIN\n  UPDATE latest SET at = new.at WHERE id = 1;\n  DELETE FROM latest;\nEND;"
    )
    [finding] = lint("CREATE TABLE t (x);\n" + trigger)
    assert finding.index == 1 and finding.kind == "delete_without_where"
    assert finding.reason.startswith("in the trigger's body")


def test_a_statement_the_parser_cannot_read_is_not_waved_through() -> None:
    findings = lint(
        "CREATE TABLE t (x);\n"
        "UPDATE OR IGNORE t SET x = 1 WHERE x = 2;\n"
        "UPDATE OR ROLLBACK t SET x = 1 WHERE x = 2;\n"
        "INSERT INTO t VALUES (1);"
    )
    assert [(f.index, f.kind) for f in findings] == [(1, "not_understood"), (2, "not_understood")]
    assert findings[0].reason.endswith("(Expected table name but got 'OR')")


def test_only_statements_with_a_destructive_keyword_are_parsed() -> None:
    # In SQLite's grammar nothing destructive is written without DROP, DELETE, UPDATE
    # or ALTER; other statements are not parsed (a megabyte of INSERTs stays cheap).
    # In strings, quoted names and comments those words do not count.
    script = (
        "REPLACE INTO t VALUES ('drop');\n"
        'SELEC "delete" FROM t; -- update\n'
        "INSERT INTO t SELECT * FROM u /* alter */;"
    )
    assert lint(script) == []


def test_deep_nesting_fails_closed() -> None:
    deep = "DELETE FROM t WHERE " + "(" * 3000 + "1" + ")" * 3000 + ";"
    assert kinds(deep) == [(0, "not_understood")]


def test_details_quote_the_statement_on_one_line_and_truncated() -> None:
    long_name = "x" * 500
    [finding] = lint(f"DROP TABLE\n   {long_name};")
    shown = finding.to_dict()
    assert shown["index"] == 0 and shown["kind"] == "drop" and shown["reason"]
    assert shown["statement"].startswith("DROP TABLE xxx") and "\n" not in shown["statement"]
    assert len(shown["statement"]) == STATEMENT_LIMIT
