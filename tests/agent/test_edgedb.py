"""The node's database, through libsql and through the stdlib sqlite3 fallback
(the aarch64 zipapp has no libsql wheel): one release commits whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.edgedb import EdgeDatabase, MigrationFailed, read_state_readonly
from edgesync.protocol import ApplySchema, FunctionRef, NodeState

SHA = "ab" * 32
HELLO = FunctionRef("hello", "1.0.0", SHA)


@pytest.fixture(params=["libsql", "sqlite3"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> EdgeDatabase:
    db = EdgeDatabase(tmp_path / "edge.db", driver=request.param)
    yield db
    db.close()


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
