"""The metadata store: every SQL statement of the control plane, in one place.

Runs unchanged on SQLite and PostgreSQL/CockroachDB (see ``db.py``). Every write
goes through :meth:`Store._write`, a transaction in a retry loop on
serialization failures (CockroachDB's SQLSTATE 40001). Every change that alters
plans bumps the fleet generation in the same transaction; the plan cache of
every replica is keyed by it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, TypeVar

from appliance.store.db import (
    Connection,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    IntegrityViolation,
    Row,
    SerializationFailure,
)
from appliance.store.records import (
    EnrollmentTokenRecord,
    FleetChange,
    FunctionRecord,
    MigrationRecord,
    NodeRecord,
    NodeStamp,
    SyncRecord,
    Target,
)
from appliance.store.schema import MIGRATIONS, ControlPlaneMigration
from edgesync.errors import (
    FunctionExists,
    InvalidEnrollmentToken,
    NotFound,
    SchemaVersionConflict,
    ServiceUnavailable,
    ValidationFailed,
)
from edgesync.protocol import PLAN_REJECTED, Ack, FunctionRef, format_time

T = TypeVar("T")

WRITE_ATTEMPTS = 8
# fleet_changes keeps this many generations: enough for any notifier that is
# merely slow (one that falls further behind notifies the whole fleet instead).
FLEET_CHANGES_KEPT = 1000
# Set by _write for the transaction body it runs: did the body bump the generation?
_BUMPED: ContextVar[list[bool] | None] = ContextVar("edgesync_generation_bumped", default=None)
# An upload's claim on (name, version) older than this belongs to a crashed upload.
STALE_UPLOAD = timedelta(minutes=15)


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("\x1f".join(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = base64.urlsafe_b64decode(padded.encode()).decode().split("\x1f")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not valid", details={"field": "cursor"}) from exc
    if len(values) != parts:
        raise ValidationFailed("cursor is not valid", details={"field": "cursor"})
    return values


class Store:
    """Domain-level reads and writes over a :class:`Database`."""

    def __init__(self, db: Database, on_retry: Callable[[], object] | None = None) -> None:
        self.db = db
        # Write transactions lost to a serialization conflict and run again
        # (``on_retry`` is called for each: the app counts them in /metrics).
        self.serialization_retries = 0
        self._on_retry = on_retry
        # A database no other process writes lets us trust what we wrote: the
        # generation and the node stamps are then served from memory.
        self._generation: int | None = None
        self._stamps: dict[str, NodeStamp] = {}
        # Bumped after every committed write. A read that started before a
        # commit must not fill a cache after it: it compares epochs first.
        self._epoch = 0
        # Called after a commit that bumped the fleet generation (the MQTT notifier).
        self._generation_listeners: list[Callable[[], None]] = []

    # -- lifecycle ------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply pending control-plane migrations; return the schema version.

        Replicas starting together on a fresh database race here. Each
        migration re-checks its record inside its transaction; when two still
        run the same DDL at once, the loser's statement fails (a duplicate
        table or catalog key) and it moves on once it sees the winner's record.
        """
        await self._create_migrations_table()
        for migration in MIGRATIONS:
            if migration.version <= await self._migration_version():
                continue
            try:
                await self._write(functools.partial(self._apply_migration, migration))
            except DatabaseUnavailable:
                raise
            except DatabaseError:
                if await self._migration_version() < migration.version:
                    raise
        return await self._migration_version()

    async def _create_migrations_table(self) -> None:
        for attempt in range(2):
            try:
                async with self.db.transaction() as tx:
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

    async def _apply_migration(self, migration: ControlPlaneMigration, tx: Connection) -> None:
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
            "INSERT INTO control_plane_migrations (version, description, applied_at)"
            " VALUES (?, ?, ?)",
            (migration.version, migration.description, format_time(_now())),
        )

    async def _migration_version(self) -> int:
        row = await self.db.fetchone("SELECT MAX(version) AS v FROM control_plane_migrations")
        return int(row["v"]) if row and row["v"] is not None else 0

    async def _write_with_retries(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``body`` in a write transaction, retrying serialization failures."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                async with self.db.transaction() as tx:
                    result = await body(tx)
                return result
            except SerializationFailure:
                if attempt == WRITE_ATTEMPTS - 1:
                    break
                self.serialization_retries += 1
                if self._on_retry is not None:
                    self._on_retry()
                await asyncio.sleep(min(0.5, 0.005 * 2**attempt) * random.uniform(0.5, 1.5))
        raise ServiceUnavailable(
            "the database kept aborting the transaction on conflicts", retry_after=1
        )

    async def _write(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        bumped: list[bool] = []
        reset = _BUMPED.set(bumped)
        try:
            result = await self._write_with_retries(body)
        finally:
            _BUMPED.reset(reset)
            self._invalidate()
        if bumped:  # committed: tell whoever watches the generation in this process
            for listener in list(self._generation_listeners):
                listener()
        return result

    def _invalidate(self, node_id: str | None = None) -> None:
        self._epoch += 1
        self._generation = None
        if node_id is not None:
            self._stamps.pop(node_id, None)

    async def _bump_generation(
        self, tx: Connection, reason: str, node_ids: list[str] | None = None
    ) -> None:
        """Move the fleet generation on and record why, in the caller's transaction.

        ``node_ids`` names the nodes whose plans change (None: the whole fleet);
        each replica's notifier reads the record and tells those nodes.
        """
        await tx.execute("UPDATE fleet_state SET generation = generation + 1 WHERE id = 1")
        row = await tx.fetchone("SELECT generation FROM fleet_state WHERE id = 1")
        assert row is not None
        generation = int(row["generation"])
        await tx.execute(
            "INSERT INTO fleet_changes (generation, reason, node_ids, created_at)"
            " VALUES (?, ?, ?, ?)",
            (
                generation,
                reason,
                json.dumps(sorted(node_ids)) if node_ids is not None else None,
                format_time(_now()),
            ),
        )
        await tx.execute(
            "DELETE FROM fleet_changes WHERE generation <= ?", (generation - FLEET_CHANGES_KEPT,)
        )
        marker = _BUMPED.get()
        if marker is not None:
            marker.append(True)

    # -- secrets and the fleet generation -------------------------------------------

    async def secret(self, name: str, make: Callable[[], str]) -> str:
        """The shared secret ``name``, created once (first replica wins)."""
        row = await self.db.fetchone("SELECT value FROM secrets WHERE name = ?", (name,))
        if row is not None:
            return str(row["value"])

        async def create(tx: Connection) -> str:
            await tx.execute(
                "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, make(), format_time(_now())),
            )
            stored = await tx.fetchone("SELECT value FROM secrets WHERE name = ?", (name,))
            assert stored is not None
            return str(stored["value"])

        return await self._write(create)

    def add_generation_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each commit of this process that bumps the generation."""
        self._generation_listeners.append(listener)

    def remove_generation_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._generation_listeners:
            self._generation_listeners.remove(listener)

    async def fleet_changes(self, *, after: int, upto: int, limit: int = 1000) -> list[FleetChange]:
        """Recorded changes with ``after < generation <= upto``, oldest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM fleet_changes WHERE generation > ? AND generation <= ?"
            " ORDER BY generation LIMIT ?",
            (after, upto, limit),
        )
        return [FleetChange.from_row(row) for row in rows]

    async def generation(self) -> int:
        if self._generation is not None and not self.db.shared:
            return self._generation
        epoch = self._epoch
        row = await self.db.fetchone("SELECT generation FROM fleet_state WHERE id = 1")
        value = int(row["generation"]) if row else 0
        if epoch == self._epoch:
            self._generation = value
        return value

    async def node_stamp(self, node_id: str) -> NodeStamp | None:
        """Token id, state revision and fleet generation: all the poll path needs."""
        if not self.db.shared:
            stamp = self._stamps.get(node_id)
            generation = await self.generation()
            if stamp is not None and stamp.generation == generation:
                return stamp
        epoch = self._epoch
        row = await self.db.fetchone(
            "SELECT n.token_jti, n.previous_token_jti, n.state_seq, f.generation"
            " FROM nodes n, fleet_state f WHERE n.id = ? AND f.id = 1",
            (node_id,),
        )
        if row is None:
            return None
        stamp = NodeStamp(
            node_id,
            row["token_jti"],
            int(row["state_seq"]),
            int(row["generation"]),
            row["previous_token_jti"],
        )
        if not self.db.shared and epoch == self._epoch:
            self._stamps[node_id] = stamp
        return stamp

    # -- enrollment tokens ----------------------------------------------------------

    async def create_enrollment_token(self, record: EnrollmentTokenRecord) -> None:
        async def insert(tx: Connection) -> None:
            await tx.execute(
                "INSERT INTO enrollment_tokens"
                " (id, secret_hash, region, max_uses, uses, expires_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.secret_hash,
                    record.region,
                    record.max_uses,
                    record.uses,
                    record.expires_at,
                    record.created_at,
                ),
            )

        await self._write(insert)

    async def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        row = await self.db.fetchone("SELECT * FROM enrollment_tokens WHERE id = ?", (token_id,))
        return EnrollmentTokenRecord.from_row(row) if row else None

    # -- nodes ----------------------------------------------------------------------

    async def register_node(self, node: NodeRecord, token_hash: str, enrollment_id: str) -> None:
        """Insert ``node`` and spend one use of its enrollment token, atomically."""

        async def register(tx: Connection) -> None:
            spent = await tx.execute(
                "UPDATE enrollment_tokens SET uses = uses + 1"
                " WHERE id = ? AND uses < max_uses AND expires_at > ?",
                (enrollment_id, node.created_at),
            )
            if spent != 1:
                raise InvalidEnrollmentToken("enrollment token is expired or used up")
            await tx.execute(
                "INSERT INTO nodes (id, name, region, labels, current_schema_version, state_seq,"
                " token_jti, token_hash, token_expires_at, poll_interval_seconds, sync_status,"
                " last_heartbeat_at, offline_after, created_at)"
                " VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?, ?, 'idle', ?, ?, ?)",
                (
                    node.id,
                    node.name,
                    node.region,
                    json.dumps(node.labels, sort_keys=True),
                    node.token_jti,
                    token_hash,
                    node.token_expires_at,
                    node.poll_interval_seconds,
                    node.last_heartbeat_at,
                    node.offline_after,
                    node.created_at,
                ),
            )

        await self._write(register)

    async def get_node(self, node_id: str) -> NodeRecord:
        row = await self.db.fetchone("SELECT * FROM nodes WHERE id = ?", (node_id,))
        if row is None:
            raise NotFound("node not found", details={"node_id": node_id})
        deployed = await self._deployments([node_id])
        return NodeRecord.from_row(row, deployed.get(node_id, ()))

    async def _deployments(self, node_ids: list[str]) -> dict[str, tuple[FunctionRef, ...]]:
        if not node_ids:
            return {}
        marks = ", ".join("?" for _ in node_ids)
        rows = await self.db.fetchall(
            "SELECT node_id, name, version, sha256 FROM node_function_deployments"
            f" WHERE node_id IN ({marks}) ORDER BY node_id, name",
            node_ids,
        )
        result: dict[str, list[FunctionRef]] = {}
        for row in rows:
            result.setdefault(row["node_id"], []).append(
                FunctionRef(row["name"], row["version"], row["sha256"])
            )
        return {node_id: tuple(refs) for node_id, refs in result.items()}

    async def list_nodes(
        self,
        *,
        now: datetime,
        status: str | None = None,
        region: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[NodeRecord], str | None]:
        clauses: list[str] = []
        params: list[Any] = []
        moment = format_time(now)
        if status == "offline":
            clauses.append("offline_after < ?")
            params.append(moment)
        elif status in ("online", "syncing"):
            clauses.append("offline_after >= ? AND sync_status = ?")
            params += [moment, "pending" if status == "syncing" else "idle"]
        if region is not None:
            clauses.append("region = ?")
            params.append(region)
        page, next_cursor = await self._page("nodes", clauses, params, limit, cursor)
        deployed = await self._deployments([row["id"] for row in page])
        nodes = [NodeRecord.from_row(row, deployed.get(row["id"], ())) for row in page]
        return nodes, next_cursor

    async def _page(
        self, table: str, clauses: list[str], params: list[Any], limit: int, cursor: str | None
    ) -> tuple[list[Row], str | None]:
        """One page of ``table`` in (created_at, id) order, keyset-paginated: the
        cursor names the last row seen, so pages stay stable while rows are added."""
        if cursor:
            created_at, row_id = decode_cursor(cursor, 2)
            clauses = [*clauses, "(created_at > ? OR (created_at = ? AND id > ?))"]
            params = [*params, created_at, created_at, row_id]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            f"SELECT * FROM {table}{where} ORDER BY created_at, id LIMIT ?", [*params, limit + 1]
        )
        page = rows[:limit]
        more = len(rows) > limit
        return page, encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None

    async def count_nodes_by_status(self, now: datetime) -> dict[str, int]:
        row = await self.db.fetchone(
            "SELECT"
            " SUM(CASE WHEN offline_after < ? THEN 1 ELSE 0 END) AS offline,"
            " SUM(CASE WHEN offline_after >= ? AND sync_status = 'pending' THEN 1 ELSE 0 END)"
            " AS syncing,"
            " SUM(CASE WHEN offline_after >= ? AND sync_status <> 'pending' THEN 1 ELSE 0 END)"
            " AS online"
            " FROM nodes",
            (format_time(now),) * 3,
        )
        return {key: int((row or {}).get(key) or 0) for key in ("online", "syncing", "offline")}

    async def heartbeat(
        self, node_id: str, now: datetime, agent_version: str | None, state_etag: str | None
    ) -> None:
        async def beat(tx: Connection) -> None:
            row = await tx.fetchone(
                "SELECT poll_interval_seconds FROM nodes WHERE id = ?", (node_id,)
            )
            if row is None:
                raise NotFound("node not found", details={"node_id": node_id})
            offline_after = now + timedelta(seconds=3 * int(row["poll_interval_seconds"]))
            await tx.execute(
                "UPDATE nodes SET last_heartbeat_at = ?, offline_after = ?,"
                " agent_version = COALESCE(?, agent_version), state_etag = COALESCE(?, state_etag)"
                " WHERE id = ?",
                (format_time(now), format_time(offline_after), agent_version, state_etag, node_id),
            )

        await self._write(beat)

    async def rotate_token(
        self, node_id: str, old_jti: str, new_jti: str, token_hash: str, expires_at: str
    ) -> bool:
        """Replace the token ``old_jti`` by ``new_jti``; False when that is not allowed.

        Repeating a rotation is allowed: presented with the token it rotated away
        and asking for the very ``new_jti`` it installed (which only the node that
        chose it knows), the rotation is re-done, so a node whose answer was lost
        is not locked out. Any other use of a rotated-away token is refused.
        """

        async def rotate(tx: Connection) -> bool:
            changed = await tx.execute(
                "UPDATE nodes SET token_jti = ?, token_hash = ?, token_expires_at = ?,"
                " previous_token_jti = ?"
                " WHERE id = ? AND (token_jti = ? OR (previous_token_jti = ? AND token_jti = ?))",
                (new_jti, token_hash, expires_at, old_jti, node_id, old_jti, old_jti, new_jti),
            )
            return changed == 1

        try:
            return await self._write(rotate)
        finally:
            self._invalidate(node_id)

    # -- functions ------------------------------------------------------------------

    async def reserve_function(self, record: FunctionRecord, now: datetime) -> None:
        """Claim ``(name, version)`` for an upload in progress (invisible to plans).

        Only the claimant stores the object, so two concurrent uploads of one
        version can never mix their bytes. A claim left by a crashed upload is
        taken over once it is older than ``STALE_UPLOAD``.
        """

        async def reserve(tx: Connection) -> None:
            await tx.execute(
                "DELETE FROM functions WHERE name = ? AND version = ?"
                " AND status = 'uploading' AND created_at < ?",
                (record.name, record.version, format_time(now - STALE_UPLOAD)),
            )
            await tx.execute(
                "INSERT INTO functions"
                " (id, name, version, sha256, size_bytes, storage_key, created_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'uploading')",
                (
                    record.id,
                    record.name,
                    record.version,
                    record.sha256,
                    record.size_bytes,
                    record.storage_key,
                    record.created_at,
                ),
            )

        try:
            await self._write(reserve)
        except IntegrityViolation as exc:
            raise FunctionExists(
                f"function {record.name} {record.version} already exists; versions are immutable",
                details={"name": record.name, "version": record.version},
            ) from exc

    async def publish_function(self, function_id: str) -> None:
        """The object is stored: make the version part of the target."""

        async def publish(tx: Connection) -> None:
            changed = await tx.execute(
                "UPDATE functions SET status = 'ready' WHERE id = ? AND status = 'uploading'",
                (function_id,),
            )
            if changed != 1:
                raise NotFound("upload reservation is gone", details={"function_id": function_id})
            await self._bump_generation(tx, "function_uploaded")

        await self._write(publish)

    async def release_function(self, function_id: str) -> None:
        """Give up an upload's claim (it failed before publishing)."""

        async def release(tx: Connection) -> None:
            await tx.execute(
                "DELETE FROM functions WHERE id = ? AND status = 'uploading'", (function_id,)
            )

        await self._write(release)

    async def function_exists(self, name: str, version: str) -> bool:
        """Whether ``(name, version)`` is taken: uploaded (deleted since or not), or
        claimed by a live upload. A stale claim does not count: the next upload
        takes it over (:meth:`reserve_function`), so it must get that far."""
        row = await self.db.fetchone(
            "SELECT id FROM functions WHERE name = ? AND version = ?"
            " AND (status <> 'uploading' OR created_at >= ?)",
            (name, version, format_time(_now() - STALE_UPLOAD)),
        )
        return row is not None

    async def get_function(
        self, function_id: str, *, include_deleted: bool = False
    ) -> FunctionRecord:
        row = await self.db.fetchone(
            "SELECT * FROM functions WHERE id = ? AND status = 'ready'", (function_id,)
        )
        if row is None or (row["deleted_at"] is not None and not include_deleted):
            raise NotFound("function not found", details={"function_id": function_id})
        return FunctionRecord.from_row(row)

    async def list_functions(
        self, *, name: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[FunctionRecord], str | None]:
        clauses = ["deleted_at IS NULL", "status = 'ready'"]
        params: list[Any] = []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        page, next_cursor = await self._page("functions", clauses, params, limit, cursor)
        return [FunctionRecord.from_row(row) for row in page], next_cursor

    async def delete_function(self, function_id: str, now: datetime) -> FunctionRecord:
        """Withdraw a version from the target. The row stays: versions are never reused."""

        async def delete(tx: Connection) -> FunctionRecord:
            row = await tx.fetchone(
                "SELECT * FROM functions WHERE id = ? AND deleted_at IS NULL AND status = 'ready'",
                (function_id,),
            )
            if row is None:
                raise NotFound("function not found", details={"function_id": function_id})
            await tx.execute(
                "UPDATE functions SET deleted_at = ? WHERE id = ?", (format_time(now), function_id)
            )
            await self._bump_generation(tx, "function_deleted")
            return FunctionRecord.from_row(row)

        return await self._write(delete)

    # -- schema migrations ----------------------------------------------------------

    async def list_migrations(self) -> list[MigrationRecord]:
        rows = await self.db.fetchall("SELECT * FROM schema_migrations ORDER BY version")
        return [MigrationRecord.from_row(row) for row in rows]

    async def add_migration(self, record: MigrationRecord) -> None:
        """Append ``record``; its version must be exactly one past the highest."""

        async def append(tx: Connection) -> None:
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
            highest = int(row["v"]) if row and row["v"] is not None else 0
            if record.version != highest + 1:
                raise SchemaVersionConflict(
                    f"schema version must be {highest + 1}",
                    details={"expected_version": highest + 1, "version": record.version},
                )
            await tx.execute(
                "INSERT INTO schema_migrations"
                " (version, description, up_sql, down_sql, checksum, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.version,
                    record.description,
                    record.up_sql,
                    record.down_sql,
                    record.checksum,
                    record.created_at,
                ),
            )
            await self._bump_generation(tx, "schema_added")

        try:
            await self._write(append)
        except IntegrityViolation as exc:  # a concurrent append won the race
            raise SchemaVersionConflict(
                f"schema version {record.version} already exists",
                details={"version": record.version},
            ) from exc

    # -- target and sync ------------------------------------------------------------

    async def target(self) -> Target:
        """Every migration, and the newest non-deleted version of every function."""
        generation = await self.generation()
        migrations = await self.list_migrations()
        rows = await self.db.fetchall(
            "SELECT * FROM functions WHERE deleted_at IS NULL AND status = 'ready'"
            " ORDER BY name, created_at DESC, id DESC"
        )
        newest: dict[str, FunctionRecord] = {}
        for row in rows:
            newest.setdefault(row["name"], FunctionRecord.from_row(row))
        return Target(generation, migrations, list(newest.values()))

    async def open_sync(self, record: SyncRecord) -> None:
        """Record a plan handed to a node; any older unacked plan is superseded."""

        async def open_record(tx: Connection) -> None:
            await tx.execute(
                "UPDATE sync_records SET status = 'failed', completed_at = ?,"
                " error_code = 'SUPERSEDED', error_message = 'superseded by a newer plan'"
                " WHERE node_id = ? AND status = 'pending'",
                (record.started_at, record.node_id),
            )
            await tx.execute(
                "INSERT INTO sync_records (id, node_id, sync_type, status, plan_etag, started_at,"
                " functions_added, functions_removed, schemas_applied)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.node_id,
                    record.sync_type,
                    record.plan_etag,
                    record.started_at,
                    record.functions_added,
                    record.functions_removed,
                    record.schemas_applied,
                ),
            )
            await tx.execute(
                "UPDATE nodes SET sync_status = 'pending' WHERE id = ?", (record.node_id,)
            )

        await self._write(open_record)

    async def record_ack(self, node_id: str, ack: Ack, now: datetime) -> tuple[SyncRecord, bool]:
        """Apply an ack; return the updated record and whether it was new information.

        Idempotent: the same ack again changes nothing. Every new ack moves the
        node's state revision on, so the next plan (and its ETag) is fresh.
        """
        digest = hashlib.sha256(json.dumps(ack.to_dict(), sort_keys=True).encode()).hexdigest()

        async def apply(tx: Connection) -> tuple[SyncRecord, bool]:
            row = await tx.fetchone("SELECT * FROM sync_records WHERE id = ?", (ack.sync_id,))
            if row is None or row["node_id"] != node_id:
                raise NotFound("sync not found", details={"sync_id": ack.sync_id})
            record = SyncRecord.from_row(row)
            if record.ack_digest == digest:
                return record, False
            success = ack.status == "success"
            moment = format_time(now)
            await tx.execute(
                "UPDATE sync_records SET status = ?, completed_at = ?, error_code = ?,"
                " error_message = ?, ack_digest = ?,"
                " functions_added = CASE WHEN ? THEN functions_added ELSE 0 END,"
                " functions_removed = CASE WHEN ? THEN functions_removed ELSE 0 END,"
                " schemas_applied = CASE WHEN ? THEN schemas_applied ELSE 0 END"
                " WHERE id = ?",
                (
                    ack.status,
                    moment,
                    ack.error.code if ack.error else None,
                    ack.error.message[:2000] if ack.error else None,
                    digest,
                    success,
                    success,
                    success,
                    ack.sync_id,
                ),
            )
            await self._save_node_state(tx, node_id, ack, moment)
            updated = await tx.fetchone("SELECT * FROM sync_records WHERE id = ?", (ack.sync_id,))
            assert updated is not None
            return SyncRecord.from_row(updated), True

        try:
            return await self._write(apply)
        finally:
            self._invalidate(node_id)

    async def _save_node_state(self, tx: Connection, node_id: str, ack: Ack, moment: str) -> None:
        pending = await tx.fetchone(
            "SELECT COUNT(*) AS n FROM sync_records WHERE node_id = ? AND status = 'pending'",
            (node_id,),
        )
        still_syncing = bool(pending and int(pending["n"]))
        # A rejection changes nothing the plan depends on: keep the revision, so the
        # node's next poll with the same ETag is a 304 instead of the same plan again.
        rejected = ack.error is not None and ack.error.code == PLAN_REJECTED
        await tx.execute(
            "UPDATE nodes SET current_schema_version = ?,"
            " state_seq = state_seq + CASE WHEN ? THEN 0 ELSE 1 END,"
            " sync_status = ?, last_sync_at = CASE WHEN ? THEN ? ELSE last_sync_at END"
            " WHERE id = ?",
            (
                ack.state.schema_version,
                rejected,
                "pending" if still_syncing else "idle",
                ack.status == "success",
                moment,
                node_id,
            ),
        )
        await tx.execute("DELETE FROM node_function_deployments WHERE node_id = ?", (node_id,))
        for ref in ack.state.functions:
            await tx.execute(
                "INSERT INTO node_function_deployments"
                " (node_id, name, version, sha256, deployed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (node_id, ref.name, ref.version, ref.sha256, moment),
            )

    async def get_sync(self, sync_id: str) -> SyncRecord | None:
        row = await self.db.fetchone("SELECT * FROM sync_records WHERE id = ?", (sync_id,))
        return SyncRecord.from_row(row) if row else None

    async def sync_history(self, node_id: str, limit: int) -> list[SyncRecord]:
        rows = await self.db.fetchall(
            "SELECT * FROM sync_records WHERE node_id = ?"
            " ORDER BY started_at DESC, id DESC LIMIT ?",
            (node_id, limit),
        )
        return [SyncRecord.from_row(row) for row in rows]


def _now() -> datetime:
    from edgesync.protocol import utcnow

    return utcnow()
