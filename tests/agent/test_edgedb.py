"""The node's database, through libsql and through the stdlib sqlite3 fallback
(the aarch64 zipapp has no libsql wheel): one release commits whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.edgedb import EdgeDatabase, MigrationFailed, read_state_readonly
from edgesync.protocol import ApplySchema, FunctionRef, NodeState

SHA = "ab" * 32
HELLO = FunctionRef("hello", "1.0.0", SHA)


def test_a_release_commits_whole(database: EdgeDatabase) -> None:
    migrations = [
        ApplySchema(1, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);"),
        ApplySchema(2, "index", "CREATE INDEX notes_body ON notes (body);"),
    ]
    state = database.apply_release(migrations, [HELLO], "sync-1")
    assert state == NodeState(2, (HELLO,))
    assert database.state() == state
    assert read_state_readonly(database.path) == state  # another process's view


def test_a_failing_migration_leaves_no_trace(database: EdgeDatabase) -> None:
    database.apply_release(
        [ApplySchema(1, "kv", "CREATE TABLE kv (k TEXT, v TEXT);")], [HELLO], "sync-1"
    )
    database.execute("INSERT INTO kv VALUES ('a', 'same'), ('b', 'same')")
    before = database.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name")
    newer = FunctionRef("hello", "2.0.0", "cd" * 32)
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release(
            [
                ApplySchema(2, "log", "CREATE TABLE log (x);"),
                ApplySchema(3, "unique", "CREATE UNIQUE INDEX kv_v ON kv (v);"),
            ],
            [newer],
            "sync-2",
        )
    assert "UNIQUE" in caught.value.details["sql_error"]
    assert database.state() == NodeState(1, (HELLO,))
    assert database.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name") == before


# -- migrations that would escape the release (defence in depth: the plan may come
# -- from a tampered control plane, whose check never saw it) ---------------------------

ESCAPES = {
    "begin-commit": "/**/BEGIN;\nCREATE TABLE stray (x);\n/**/COMMIT;",
    "commit-midway": "CREATE TABLE stray (x);\n/**/COMMIT;",
    "savepoint-commit": "CREATE TABLE stray (x);\n/**/SAVEPOINT s;\n/**/COMMIT;",
    "release": "/**/SAVEPOINT s;\nCREATE TABLE stray (x);\n/**/RELEASE s;",
    "rollback": "CREATE TABLE stray (x);\n/**/ROLLBACK;",
    "attach": "/**/ATTACH DATABASE '{elsewhere}' AS other;\nCREATE TABLE other.stray (x);",
    "detach": "DETACH DATABASE main;",
    "vacuum": "/**/VACUUM;",
    "vacuum-into": "VACUUM INTO '{elsewhere}';",
    "load-extension": "SELECT load_extension('{elsewhere}');",
    "temp-table": "CREATE TEMP TABLE stray (x);",
}
# Only the engine's authorizer (the dry run, or the sqlite3 driver) knows these.
RULES_ONLY = {
    "pragma": "PRAGMA user_version = 99;",
    "pragma-writable-schema": "/**/PRAGMA writable_schema = ON;",
    "bookkeeping": "CREATE TABLE stray (x);\nDELETE FROM _edgesync_functions;",
    "bookkeeping-version": "INSERT INTO _edgesync_migrations VALUES (9, 'x', 'y', NULL, 'z');",
}


def snapshot(database: EdgeDatabase) -> list[tuple[object, ...]]:
    return database.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name")


def released_once(database: EdgeDatabase) -> list[tuple[object, ...]]:
    database.apply_release(
        [ApplySchema(1, "kv", "CREATE TABLE kv (k TEXT, v TEXT);")], [HELLO], "sync-1"
    )
    database.execute("INSERT INTO kv VALUES ('a', 'b')")
    return snapshot(database)


def assert_refused_untouched(
    database: EdgeDatabase, before: list[tuple[object, ...]], up_sql: str, tmp_path: Path
) -> MigrationFailed:
    elsewhere = tmp_path / "elsewhere.db"
    newer = FunctionRef("hello", "2.0.0", "cd" * 32)
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release(
            [ApplySchema(2, "escape", up_sql.format(elsewhere=elsewhere))], [newer], "sync-2"
        )
    assert caught.value.code == "MIGRATION_FAILED"
    assert caught.value.details["version"] == 2
    assert caught.value.details["reason"] == "refused", caught.value.details
    # Exactly the old state: schema, data, version, functions; nothing written elsewhere.
    assert database.state() == NodeState(1, (HELLO,))
    assert snapshot(database) == before
    assert database.execute("SELECT * FROM kv") == [("a", "b")]
    assert read_state_readonly(database.path) == NodeState(1, (HELLO,))
    assert not elsewhere.exists()
    # And the connection is fit for the next release.
    database.apply_release([ApplySchema(2, "fine", "CREATE TABLE fine (x);")], [newer], "sync-3")
    assert database.state() == NodeState(2, (newer,))
    return caught.value


@pytest.mark.parametrize("name", sorted({**ESCAPES, **RULES_ONLY}))
def test_a_migration_that_escapes_the_release_is_refused(
    database: EdgeDatabase, tmp_path: Path, name: str
) -> None:
    before = released_once(database)
    assert_refused_untouched(database, before, {**ESCAPES, **RULES_ONLY}[name], tmp_path)


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_the_apply_itself_refuses_what_a_missed_dry_run_would_let_through(
    database: EdgeDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Second layer: with the dry run out of the way, the real apply still refuses
    (the authorizer on sqlite3; compiled programs and after-checks on libsql)."""
    before = released_once(database)
    monkeypatch.setattr("agent.edgedb._prove", lambda *steps: None)
    assert_refused_untouched(database, before, ESCAPES[name], tmp_path)


def test_the_sqlite3_driver_enforces_the_rules_on_the_real_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = EdgeDatabase(tmp_path / "edge.db", driver="sqlite3")
    try:
        before = released_once(database)
        monkeypatch.setattr("agent.edgedb._prove", lambda *steps: None)
        for up_sql in RULES_ONLY.values():
            failure = assert_refused_untouched(database, before, up_sql, tmp_path)
            assert failure.details["rule"] in ("PRAGMA", "RESERVED")
            database.execute("DROP TABLE fine")
            database.execute("DELETE FROM _edgesync_migrations WHERE version = 2")
            database.apply_release([], [HELLO], "sync-back")
            before = snapshot(database)
    finally:
        database.close()


@pytest.mark.parametrize(
    "up_sql", ["SELECT load_extension('x');", "SELECT abs(-9223372036854775808);"]
)
def test_an_error_inside_a_select_fails_the_release(database: EdgeDatabase, up_sql: str) -> None:
    released_once(database)
    with pytest.raises(MigrationFailed):
        database.apply_release(
            [ApplySchema(2, "select", f"CREATE TABLE stray (x);\n{up_sql}")], [HELLO], "sync-2"
        )
    assert database.state() == NodeState(1, (HELLO,))
    assert "stray" not in {row[1] for row in snapshot(database)}


def test_an_endless_statement_stops_at_the_dry_run_deadline(
    database: EdgeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    released_once(database)
    monkeypatch.setattr("agent.edgedb.DRY_RUN_SECONDS", 0.2)
    endless = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n;"
    )
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release([ApplySchema(2, "endless", endless)], [HELLO], "sync-2")
    assert caught.value.details["reason"] == "timeout"
    assert database.state() == NodeState(1, (HELLO,))


def test_the_dry_run_sees_the_nodes_schema_virtual_tables_included(
    database: EdgeDatabase,
) -> None:
    """Migrations build on what earlier releases made; the dry run copies that schema."""
    database.apply_release(
        [ApplySchema(1, "docs", "CREATE VIRTUAL TABLE docs USING fts5(body);")], [HELLO], "s-1"
    )
    state = database.apply_release(
        [
            ApplySchema(2, "more", "INSERT INTO docs (body) VALUES ('hello');"),
            ApplySchema(3, "kv", "CREATE TABLE kv (k TEXT);\nCREATE INDEX kv_k ON kv (k);"),
        ],
        [HELLO],
        "s-2",
    )
    assert state.schema_version == 3
    assert database.execute("SELECT body FROM docs WHERE docs MATCH 'hello'") == [("hello",)]
