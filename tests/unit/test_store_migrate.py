"""The control-plane migration runner on every database kind: idempotent
statements run one by one, the record after them, one replica at a time."""

from __future__ import annotations

import asyncio
import re

import pytest

from appliance.store import migrate
from appliance.store.db import Database, DatabaseUnavailable, open_database
from appliance.store.schema import MIGRATIONS
from appliance.store.store import Store

IDEMPOTENT = re.compile(
    r"^\s*(CREATE\s+(TABLE|(UNIQUE\s+)?INDEX)\s+IF\s+NOT\s+EXISTS"
    r"|DROP\s+(TABLE|INDEX)\s+IF\s+EXISTS"
    r"|ALTER\s+TABLE\s+\w+\s+ADD\s+COLUMN"
    r"|UPDATE\s)",
    re.IGNORECASE,
)


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda m: f"v{m.version}")
def test_every_statement_can_run_twice_by_its_form(
    migration: migrate.ControlPlaneMigration,
) -> None:
    for statement in migration.statements():
        insert = re.match(r"^\s*INSERT\s", statement, re.IGNORECASE)
        if insert:
            assert re.search(r"ON\s+CONFLICT\b.*\bDO\s+NOTHING\s*;?\s*$", statement, re.S | re.I), (
                f"migration {migration.version}: an INSERT needs ON CONFLICT … DO NOTHING"
            )
        else:
            assert IDEMPOTENT.match(statement), (
                f"migration {migration.version} has a statement that cannot run twice:"
                f" {statement[:80]!r}"
            )


async def _schema(database: Database) -> list[tuple[str, ...]]:
    if database.dialect == "sqlite":
        rows = await database.fetchall(
            "SELECT m.name AS t, p.name AS c, p.type AS ty FROM sqlite_master m,"
            " pragma_table_info(m.name) p WHERE m.type = 'table' ORDER BY m.name, p.cid"
        )
        indexes = await database.fetchall(
            "SELECT name AS t, '' AS c, '' AS ty FROM sqlite_master WHERE type = 'index'"
            " AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name"
        )
    else:
        rows = await database.fetchall(
            "SELECT table_name AS t, column_name AS c, data_type AS ty"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " ORDER BY table_name, ordinal_position"
        )
        indexes = await database.fetchall(
            "SELECT indexname AS t, '' AS c, '' AS ty FROM pg_indexes"
            " WHERE schemaname = current_schema() ORDER BY indexname"
        )
    return [(r["t"], r["c"], r["ty"]) for r in [*rows, *indexes]]


async def test_every_migration_runs_again_over_itself_without_change(database_url: str) -> None:
    """A replica that died after a migration's statements but before its record
    runs them all again: nothing fails and nothing changes (data included)."""
    database = await open_database(database_url)
    try:
        store = Store(database)
        latest = await store.migrate()
        before = await _schema(database)
        generation = await database.fetchone("SELECT * FROM fleet_state WHERE id = 1")
        await database.execute("DELETE FROM control_plane_migrations")
        assert await store.migrate() == latest
        assert await _schema(database) == before
        assert await database.fetchone("SELECT * FROM fleet_state WHERE id = 1") == generation
    finally:
        await database.close()


async def test_a_held_lock_makes_the_next_replica_wait_then_it_migrates(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "POLL_SECONDS", 0.01)
    database = await open_database(database_url)
    try:
        store = Store(database)
        monkeypatch.setattr(migrate, "MIGRATIONS", MIGRATIONS[:2])
        assert await store.migrate() == 2
        await database.execute(
            "UPDATE control_plane_migration_lock SET owner = 'other:1:x', expires_at = ?",
            ("9999-12-31T00:00:00.000000Z",),
        )
        monkeypatch.setattr(migrate, "MIGRATIONS", MIGRATIONS)
        waiting = asyncio.ensure_future(store.migrate())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert await migrate.migration_version(database) == 2
        await database.execute("UPDATE control_plane_migration_lock SET owner = NULL")
        assert await waiting == MIGRATIONS[-1].version
        row = await database.fetchone("SELECT owner FROM control_plane_migration_lock")
        assert row is not None and row["owner"] is None  # released
    finally:
        await database.close()


async def test_an_expired_lease_is_taken_over(database_url: str) -> None:
    database = await open_database(database_url)
    try:
        store = Store(database)
        await migrate.run_migrations(database, store._write)  # the tables exist
        await database.execute("DELETE FROM control_plane_migrations WHERE version > 1")
        await database.execute(
            "UPDATE control_plane_migration_lock SET owner = 'dead:1:x', expires_at = ?",
            ("2000-01-01T00:00:00.000000Z",),
        )
        assert await store.migrate() == MIGRATIONS[-1].version
    finally:
        await database.close()


async def test_a_lock_held_too_long_is_a_clear_503(database_url: str) -> None:
    database = await open_database(database_url)
    try:
        store = Store(database)
        await store.migrate()
        await database.execute("DELETE FROM control_plane_migrations WHERE version > 1")
        await database.execute(
            "UPDATE control_plane_migration_lock SET owner = 'other:1:x', expires_at = ?",
            ("9999-12-31T00:00:00.000000Z",),
        )
        with pytest.raises(DatabaseUnavailable, match="migration lock"):
            await migrate.run_migrations(database, store._write, wait=0.0)
    finally:
        await database.close()
