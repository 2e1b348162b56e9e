"""The node's libsql database: application schema plus the agent's bookkeeping.

The bookkeeping (``_edgesync_*`` tables) lives in the same file as the schema
that migrations build, so ONE transaction covers a release: the migrations in
order and the new function table commit together or not at all (docs/agent.md). After a crash the file says exactly which release
the node is on.

Migrations run through the shared runner (:mod:`edgesync.sqlrunner`) under the
migration rules (:mod:`edgesync.sqlguard`), even from a tampered control plane.
libsql 0.1 has no authorizer, so before it touches the file a plan's
migrations are proved under the rules on a stdlib ``sqlite3`` in-memory copy of
the node's schema (a dry run: no data); during the real apply the runner checks
after each statement that the release's transaction is still open and nothing
was attached. On the stdlib ``sqlite3`` driver the rules sit on the real
connection as well. Anything refused: rollback, ``MIGRATION_FAILED``.

Going back across a migration (a plan's ``revert_schema`` actions) is part of
the same transaction: each revert runs that migration's ``down_sql`` through
the same runner and rules (in the dry run too) and forgets the migration's
bookkeeping row, before the plan's migrations and its function table.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgesync.errors import EdgesyncError
from edgesync.protocol import (
    ApplySchema,
    FunctionRef,
    NodeState,
    RevertSchema,
    format_time,
    utcnow,
)
from edgesync.sqlguard import MigrationRules
from edgesync.sqlrunner import ScriptFailed, dry_run, run_script
from edgesync.sqlscript import split_statements

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS _edgesync_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    sync_id TEXT,
    applied_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _edgesync_functions (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    deployed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _edgesync_releases (
    sync_id TEXT PRIMARY KEY,
    schema_version INTEGER NOT NULL,
    functions INTEGER NOT NULL,
    committed_at TEXT NOT NULL
);
"""

# A bound on the dry run's statements (no data in it: only pathological SQL is
# slow there). Above the control plane's default check limit, for slower nodes.
DRY_RUN_SECONDS = 30.0
_APP_SCHEMA = (
    "SELECT name, sql FROM sqlite_master"
    " WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
)


class MigrationFailed(EdgesyncError):
    """A migration did not apply; the release was rolled back. Permanent."""

    code = "MIGRATION_FAILED"
    status = 422


class EdgeDatabase:
    """A libsql connection to ``DIR/edge.db``; calls are synchronous (run them in a thread)."""

    def __init__(self, path: Path, *, driver: str = "auto") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection: Any = connect(path, driver)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in split_statements(BOOKKEEPING):
                    self._connection.execute(statement)
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise

    def state(self) -> NodeState:
        with self._lock:
            return _read_state(self._connection)

    def apply_release(
        self,
        migrations: Sequence[ApplySchema],
        functions: Sequence[FunctionRef],
        sync_id: str | None,
        checkpoint: Callable[[str], None] = lambda point: None,
        reverts: Sequence[RevertSchema] = (),
    ) -> NodeState:
        """Revert ``reverts`` (descending, from the node's version), apply
        ``migrations`` and make ``functions`` the function table, atomically.

        Raises :class:`MigrationFailed` (after rolling back) when a statement fails.
        """
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                current = _check_reverts(reverts, _schema_version(connection))
                _check_sequence(migrations, current)
                if migrations or reverts:
                    _prove(connection, reverts, migrations)
                for revert in reverts:
                    _revert_migration(connection, revert)
                    checkpoint("reverting")
                applying = "apply" if reverts else None  # details.phase, as in the dry run
                for migration in migrations:
                    _apply_migration(connection, migration, sync_id, applying)
                    current = migration.version
                    checkpoint("migrating")
                now = format_time(utcnow())
                connection.execute("DELETE FROM _edgesync_functions")
                for ref in functions:
                    connection.execute(
                        "INSERT INTO _edgesync_functions (name, version, sha256, deployed_at)"
                        " VALUES (?, ?, ?, ?)",
                        (ref.name, ref.version, ref.sha256, now),
                    )
                if sync_id is not None:
                    connection.execute(
                        "INSERT INTO _edgesync_releases"
                        " (sync_id, schema_version, functions, committed_at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (sync_id) DO NOTHING",
                        (sync_id, current, len(functions), now),
                    )
                state = _read_state(connection)
                checkpoint("committing")
                connection.commit()
                return state
            except BaseException:
                connection.rollback()
                raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction (for tools and tests)."""
        with self._lock:
            cursor = self._connection.execute(sql, tuple(params))
            rows = cursor.fetchall()
            self._connection.commit()
            return list(rows or [])  # libsql answers None for statements without rows

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _check_sequence(migrations: Sequence[ApplySchema], current: int) -> None:
    for migration in migrations:
        if migration.version != current + 1:
            raise MigrationFailed(
                f"migration {migration.version} does not follow schema version {current}",
                details={"version": migration.version, "schema_version": current},
            )
        current = migration.version


def _check_reverts(reverts: Sequence[RevertSchema], current: int) -> int:
    """The schema version after ``reverts``: each must revert the version the node is on."""
    for revert in reverts:
        if revert.version != current:
            raise MigrationFailed(
                f"cannot revert migration {revert.version}: the node is on schema version"
                f" {current}",
                details={"version": revert.version, "schema_version": current, "phase": "revert"},
            )
        current -= 1
    return current


def _prove(
    connection: Any, reverts: Sequence[RevertSchema], migrations: Sequence[ApplySchema]
) -> None:
    """The dry run: ``reverts`` then ``migrations`` under the rules on a stdlib copy
    of the schema.

    The schema is read through the node's own connection: opening ``edge.db``
    with a second SQLite library in this process would break its locks (closing one unlinks the other's WAL).
    """
    schema = [(str(name), str(sql)) for name, sql in connection.execute(_APP_SCHEMA).fetchall()]
    try:
        dry_run(
            schema,
            [(m.version, m.up_sql) for m in migrations],
            deadline_seconds=DRY_RUN_SECONDS,
            reverts=[(r.version, r.down_sql) for r in reverts],
        )
    except ScriptFailed as failure:
        raise _migration_failed(failure) from failure


def _run_migration_sql(
    connection: Any, script: str, version: int, phase: str | None = None
) -> None:
    try:
        if isinstance(connection, sqlite3.Connection):
            rules = MigrationRules()
            with rules.installed(connection):
                run_script(connection, script, rules=rules)
        else:  # libsql: no authorizer; the runner checks after each statement instead
            run_script(connection, script)
    except ScriptFailed as failure:
        failure.version = version
        failure.phase = phase
        raise _migration_failed(failure) from failure


def _revert_migration(connection: Any, revert: RevertSchema) -> None:
    _run_migration_sql(connection, revert.down_sql, revert.version, "revert")
    connection.execute("DELETE FROM _edgesync_migrations WHERE version = ?", (revert.version,))


def _apply_migration(
    connection: Any, migration: ApplySchema, sync_id: str | None, phase: str | None
) -> None:
    _run_migration_sql(connection, migration.up_sql, migration.version, phase)
    connection.execute(
        "INSERT INTO _edgesync_migrations (version, description, checksum, sync_id, applied_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            migration.version,
            migration.description,
            hashlib.sha256(migration.up_sql.encode()).hexdigest(),
            sync_id,
            format_time(utcnow()),
        ),
    )


def _migration_failed(failure: ScriptFailed) -> MigrationFailed:
    return MigrationFailed(failure.message, details=failure.details)


def connect(path: Path, driver: str = "auto") -> Any:
    """A connection to ``path`` through libsql, or the stdlib sqlite3 where no libsql
    wheel exists (the aarch64 zipapp): the same file format, the same DB-API calls.

    ``driver``: ``auto`` (libsql when importable), ``libsql`` or ``sqlite3``.
    """
    if driver in ("auto", "libsql"):
        try:
            import libsql
        except ImportError:
            if driver == "libsql":
                raise
        else:
            return libsql.connect(str(path))
    # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE ones.
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # edge.db is the only file, ever
    return connection


def _schema_version(connection: Any) -> int:
    row = connection.execute("SELECT MAX(version) FROM _edgesync_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _read_state(connection: Any) -> NodeState:
    rows = connection.execute(
        "SELECT name, version, sha256 FROM _edgesync_functions ORDER BY name"
    ).fetchall()
    return NodeState(_schema_version(connection), tuple(FunctionRef(*row) for row in rows))


def read_state_readonly(path: Path) -> NodeState:
    """The node state from another process (``agent status``, ``invoke``), via sqlite3."""
    if not path.exists():
        return NodeState()
    connection = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True, timeout=5)
    try:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "_edgesync_functions" not in tables:
            return NodeState()
        return _read_state(connection)
    finally:
        connection.close()
