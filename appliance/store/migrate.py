"""The control-plane migration runner (the migrations themselves are data: ``schema.py``).

Written for CockroachDB's rules, and run the same way on SQLite and PostgreSQL:

* One replica migrates at a time. It holds ``control_plane_migration_lock``, a
  table of one row taken with an owner id and a lease (advisory locks are
  no-ops on CockroachDB). The lease is renewed before every statement; a
  replica that died holding it delays the others by one lease at most. Waiting
  replicas poll; they stop waiting as soon as the schema is current.
* Each statement runs on its own, not in one transaction of DDL: CockroachDB may
  report such a transaction as partially committed (SQLSTATE XXA00). Every
  statement is idempotent (``schema.py``), so a statement whose outcome is
  unknown (XXA00, 40003) or lost (40001) simply runs again, and a migration
  interrupted half way is re-run from its first statement.
* The record of a migration is written after its statements.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from appliance.store.db import Connection, Database, DatabaseError, DatabaseUnavailable
from appliance.store.retry import retry_idempotent
from appliance.store.schema import MIGRATIONS, ControlPlaneMigration
from edgesync.protocol import format_time, utcnow

T = TypeVar("T")
Write = Callable[[Callable[[Connection], Awaitable[T]]], Awaitable[T]]

# A lock holder renews its lease before each statement; one statement (a
# backfill on a large table) must finish well within it.
LEASE = timedelta(minutes=5)
POLL_SECONDS = 0.5
# How long a replica waits for another one's migrations before giving up.
WAIT_SECONDS = 900.0

_ADD_COLUMN = re.compile(
    r"^\s*ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(?!IF\s+NOT\s+EXISTS)(\w+)", re.IGNORECASE
)
_BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS control_plane_migrations ("
    " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS control_plane_migration_lock ("
    " id INTEGER PRIMARY KEY, owner TEXT, expires_at TEXT NOT NULL)",
    "INSERT INTO control_plane_migration_lock (id, owner, expires_at) VALUES (1, NULL, '')"
    " ON CONFLICT (id) DO NOTHING",
)


class MigrationLockLost(DatabaseError):
    """Another replica took the migration lock after our lease ran out."""


def owner_id() -> str:
    """Who holds the lock, for an operator reading the row: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def run_migrations(db: Database, write: Write[bool], *, wait: float = WAIT_SECONDS) -> int:
    """Apply pending control-plane migrations; return the schema version.

    ``write`` is the store's write loop (a transaction re-run on conflicts).
    """
    for statement in _BOOTSTRAP:
        await _bootstrap(db, statement)
    latest = MIGRATIONS[-1].version if MIGRATIONS else 0
    if await migration_version(db) >= latest:
        return await migration_version(db)
    owner = owner_id()
    if not await _acquire(db, write, owner, latest, wait):
        return await migration_version(db)
    try:
        for migration in MIGRATIONS:
            if migration.version > await migration_version(db):
                await _apply(db, write, owner, migration)
    finally:
        await _release(write, owner)
    return await migration_version(db)


async def _bootstrap(db: Database, statement: str) -> None:
    """The runner's own tables, before any lock exists to serialise them."""
    for attempt in range(3):
        try:
            await retry_idempotent(lambda: db.execute(statement))
            return
        except DatabaseUnavailable:
            raise
        except DatabaseError:
            # PostgreSQL's IF NOT EXISTS is not atomic: a replica creating the
            # table at the same moment makes ours fail once; then it exists.
            if attempt == 2:
                raise


async def _acquire(db: Database, write: Write[bool], owner: str, latest: int, wait: float) -> bool:
    """Take the lock (True), or see the schema reach ``latest`` meanwhile (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    lock = "" if db.dialect == "sqlite" else " FOR UPDATE"

    async def take(tx: Connection) -> bool:
        row = await tx.fetchone(
            f"SELECT owner, expires_at FROM control_plane_migration_lock WHERE id = 1{lock}"
        )
        now = format_time(utcnow())
        if row is not None and row["owner"] not in (None, owner) and row["expires_at"] > now:
            return False
        await tx.execute(
            "UPDATE control_plane_migration_lock SET owner = ?, expires_at = ? WHERE id = 1",
            (owner, format_time(utcnow() + LEASE)),
        )
        return True

    while True:
        if await retry_idempotent(lambda: write(take)):
            return True
        if await migration_version(db) >= latest:
            return False
        if loop.time() > deadline:
            raise DatabaseUnavailable(
                f"another replica held the migration lock for over {wait:g} s"
            )
        await asyncio.sleep(POLL_SECONDS)


async def _renew(write: Write[bool], owner: str) -> None:
    async def renew(tx: Connection) -> bool:
        changed = await tx.execute(
            "UPDATE control_plane_migration_lock SET expires_at = ? WHERE id = 1 AND owner = ?",
            (format_time(utcnow() + LEASE), owner),
        )
        return changed == 1

    if not await retry_idempotent(lambda: write(renew)):
        raise MigrationLockLost("the migration lock was taken over; this replica stops migrating")


async def _release(write: Write[bool], owner: str) -> None:
    async def release(tx: Connection) -> bool:
        await tx.execute(
            "UPDATE control_plane_migration_lock SET owner = NULL, expires_at = ''"
            " WHERE id = 1 AND owner = ?",
            (owner,),
        )
        return True

    try:
        await retry_idempotent(lambda: write(release))
    except DatabaseError:
        pass  # the lease runs out on its own


async def _apply(
    db: Database, write: Write[bool], owner: str, migration: ControlPlaneMigration
) -> None:
    for statement in migration.statements():
        await _renew(write, owner)
        await retry_idempotent(functools.partial(_run_statement, db, statement))

    async def record(tx: Connection) -> bool:
        await tx.execute(
            "INSERT INTO control_plane_migrations (version, description, applied_at)"
            " VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING",
            (migration.version, migration.description, format_time(utcnow())),
        )
        return True

    await retry_idempotent(lambda: write(record))


async def _run_statement(db: Database, statement: str) -> None:
    """Run one statement on its own; a column already added is not added again
    (looked up on every run: an ambiguous first run may have added it)."""
    if not await _column_exists(db, statement):
        await db.execute(statement)


async def _column_exists(db: Database, statement: str) -> bool:
    """Is ``statement`` an ``ADD COLUMN`` of a column the table already has?"""
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    table, column = match.group(1).lower(), match.group(2).lower()
    if db.dialect == "sqlite":
        sql = "SELECT 1 AS found FROM pragma_table_info(?) WHERE lower(name) = ?"
    else:
        sql = (
            "SELECT 1 AS found FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?"
        )
    return await db.fetchone(sql, (table, column)) is not None


async def migrate_database(url: str, *, wait: float = WAIT_SECONDS) -> int:
    """Open ``url``, migrate it, close it: ``edgesync migrate`` (the k3s migrate Job)."""
    from appliance.store.db import open_database
    from appliance.store.store import Store

    database = await open_database(url)
    try:
        store = Store(database)
        return await run_migrations(database, store._write, wait=wait)
    finally:
        await database.close()


async def migration_version(db: Database) -> int:
    row = await db.fetchone("SELECT MAX(version) AS v FROM control_plane_migrations")
    return int(row["v"]) if row and row["v"] is not None else 0
