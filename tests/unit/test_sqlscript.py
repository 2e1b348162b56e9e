"""split_statements: one statement per ';' that really ends a statement."""

from __future__ import annotations

import random
import sqlite3

import pytest

from edgesync.sqlscript import split_statements


def test_simple_statements_in_order() -> None:
    script = "CREATE TABLE a (x INTEGER);\nCREATE TABLE b (y TEXT);\nINSERT INTO a VALUES (1);"
    assert split_statements(script) == [
        "CREATE TABLE a (x INTEGER);",
        "CREATE TABLE b (y TEXT);",
        "INSERT INTO a VALUES (1);",
    ]


def test_several_statements_on_one_line() -> None:
    assert split_statements("SELECT 1; SELECT 2;SELECT 3;") == [
        "SELECT 1;",
        "SELECT 2;",
        "SELECT 3;",
    ]


@pytest.mark.parametrize("script", ["", "   \n\n", ";", ";;\n;", "-- only a comment\n", "/* c */"])
def test_empty_scripts_have_no_statements(script: str) -> None:
    assert split_statements(script) == []


def test_semicolon_inside_string_literals_does_not_split() -> None:
    script = "INSERT INTO t VALUES ('a;b', \"c;d\");\nINSERT INTO t VALUES ('it''s; fine');"
    assert split_statements(script) == [
        "INSERT INTO t VALUES ('a;b', \"c;d\");",
        "INSERT INTO t VALUES ('it''s; fine');",
    ]


def test_multiline_string_literal_with_semicolons() -> None:
    script = "INSERT INTO t VALUES ('line one;\n-- not a comment;\nline three');\nSELECT 1;"
    statements = split_statements(script)
    assert len(statements) == 2
    assert "-- not a comment;" in statements[0]


def test_semicolons_inside_comments_do_not_split() -> None:
    script = (
        "-- leading comment; with a semicolon\n"
        "CREATE TABLE a (x INTEGER); -- trailing; comment\n"
        "/* block; comment\n spanning; lines */\n"
        "CREATE TABLE b (y INTEGER);\n"
        "-- final comment only\n"
    )
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("CREATE TABLE a (x INTEGER);")
    assert statements[1].endswith("CREATE TABLE b (y INTEGER);")


def test_trigger_body_stays_one_statement() -> None:
    script = """
    CREATE TABLE t (x INTEGER);
    CREATE TABLE log (x INTEGER, note TEXT);
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        INSERT INTO log VALUES (NEW.x, 'inserted; really');
        UPDATE log SET note = 'seen' WHERE x = NEW.x;
    END;
    INSERT INTO t VALUES (1);
    """
    statements = split_statements(script)
    assert len(statements) == 4
    assert statements[2].startswith("CREATE TRIGGER") and statements[2].endswith("END;")
    # And they really execute in order, trigger included.
    connection = sqlite3.connect(":memory:")
    for statement in statements:
        connection.execute(statement)
    assert connection.execute("SELECT x, note FROM log").fetchall() == [(1, "seen")]


def test_trailing_fragment_without_semicolon_is_kept() -> None:
    assert split_statements("SELECT 1;\nSELECT 2") == ["SELECT 1;", "SELECT 2"]


def test_incomplete_statement_is_returned_to_fail_on_execution() -> None:
    statements = split_statements("CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES ('open")
    assert statements[0] == "CREATE TABLE a (x INTEGER);"
    assert len(statements) == 2
    with pytest.raises(sqlite3.Error):
        sqlite3.connect(":memory:").execute(statements[1])


def test_crlf_line_endings() -> None:
    assert split_statements("SELECT 1;\r\nSELECT 2;\r\n") == ["SELECT 1;", "SELECT 2;"]


@pytest.mark.parametrize(
    "statement",
    [
        "/**/BEGIN;",
        "/* hidden */ ATTACH DATABASE 'x.db' AS x;",
        "-- comment\n/**/SAVEPOINT s;",
        "/**/ /* twice */ COMMIT;",
    ],
)
def test_comment_prefixed_statements_are_kept_for_the_engine_to_judge(statement: str) -> None:
    assert split_statements(f"CREATE TABLE t (x);\n{statement}\nSELECT 1;") == [
        "CREATE TABLE t (x);",
        statement,
        "SELECT 1;",
    ]


def test_quoted_identifiers_and_brackets_do_not_split() -> None:
    script = 'CREATE TABLE "a;b" ([c;d] TEXT, `e;f` TEXT);\nSELECT 1;'
    assert split_statements(script) == ['CREATE TABLE "a;b" ([c;d] TEXT, `e;f` TEXT);', "SELECT 1;"]


def test_an_unterminated_block_comment_runs_to_the_end() -> None:
    assert split_statements("SELECT 1;\n/* SELECT 2; SELECT 3;") == ["SELECT 1;"]


def test_a_megabyte_of_semicolons_in_one_literal_is_one_statement() -> None:
    """Asking sqlite3.complete_statement about each ';' took minutes on this."""
    literal = "'" + ";" * 1_000_000 + "'"
    assert split_statements(f"INSERT INTO t VALUES ({literal});") == [
        f"INSERT INTO t VALUES ({literal});"
    ]


def _reference_split(script: str) -> list[str]:
    """Cut at the first ';' that makes sqlite3.complete_statement true, again and again."""
    pieces, rest = [], script
    position = rest.find(";")
    while position != -1:
        if sqlite3.complete_statement(rest[: position + 1]):
            pieces.append(rest[: position + 1].strip())
            rest = rest[position + 1 :]
            position = rest.find(";")
        else:
            position = rest.find(";", position + 1)
    pieces.append(rest.strip())
    return [piece for piece in pieces if split_statements(piece)]


def test_statements_end_exactly_where_sqlite_says_they_are_complete() -> None:
    vocabulary = [
        ";", " ", "\n", "CREATE", "create", "TRIGGER", "TEMP", "temporary", "END", "end",
        "BEGIN", "EXPLAIN", "x", "'a;b'", "'", '"q;"', "`b;`", "[a;]", "/* ; */", "/*",
        "*/", "-- c;\n", "--", "(", "1", "$v", "é", "endx", ";;",
    ]  # fmt: skip
    rng = random.Random(8)
    for _ in range(3000):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(1, 25))]
        script = (" " if rng.random() < 0.5 else "").join(words)
        assert split_statements(script) == _reference_split(script), script
