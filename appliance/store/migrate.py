"""The control-plane migration runner (the migrations themselves are data: ``schema.py``).

Replicas starting together on a fresh database race here. Each migration
re-checks its record inside its transaction; when two still run the same DDL at
once, the loser's statement fails (a duplicate table or catalog key) and it
moves on once it sees the winner's record.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from appliance.store.db import Connection, Database, DatabaseError, DatabaseUnavailable
from appliance.store.schema import MIGRATIONS, ControlPlaneMigration
from edgesync.protocol import format_time, utcnow

T = TypeVar("T")
Write = Callable[[Callable[[Connection], Awaitable[T]]], Awaitable[T]]


async def run_migrations(db: Database, write: Write[None]) -> int:
    """Apply pending control-plane migrations; return the schema version."""
    await _create_migrations_table(db)
    for migration in MIGRATIONS:
        if migration.version <= await migration_version(db):
            continue
        try:
            await write(functools.partial(_apply_migration, migration))
        except DatabaseUnavailable:
            raise
        except DatabaseError:
            if await migration_version(db) < migration.version:
                raise
    return await migration_version(db)


async def _create_migrations_table(db: Database) -> None:
    for attempt in range(2):
        try:
            async with db.transaction() as tx:
                await tx.execute(
                    "CREATE TABLE IF NOT EXISTS control_plane_migrations ("
                    " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                    " applied_at TEXT NOT NULL)"
                )
            return
        except DatabaseUnavailable:
            raise
        except DatabaseError:
            # PostgreSQL's IF NOT EXISTS is not atomic: a replica creating the
            # table at the same moment makes ours fail once; then it exists.
            if attempt == 1:
                raise


async def _apply_migration(migration: ControlPlaneMigration, tx: Connection) -> None:
    # Re-check inside the transaction: another replica may have won.
    row = await tx.fetchone(
        "SELECT version FROM control_plane_migrations WHERE version = ?",
        (migration.version,),
    )
    if row is not None:
        return
    for statement in migration.statements():
        await tx.execute(statement)
    await tx.execute(
        "INSERT INTO control_plane_migrations (version, description, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.description, format_time(utcnow())),
    )


async def migration_version(db: Database) -> int:
    row = await db.fetchone("SELECT MAX(version) AS v FROM control_plane_migrations")
    return int(row["v"]) if row and row["v"] is not None else 0
