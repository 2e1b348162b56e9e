"""The store's core: transactions in a retry loop, the fleet generation.

Runs unchanged on SQLite and PostgreSQL/CockroachDB (see ``db.py``). Every write
goes through :meth:`StoreBase._write`, a transaction in a retry loop on
serialization failures (CockroachDB's SQLSTATE 40001). Every change that alters
plans bumps the fleet generation in the same transaction; the plan cache of
every replica is keyed by it. The store is SQL only: it caches nothing. Each
write body runs on a :class:`Transaction` that records what it bumped, handed
after the transaction to the commit listeners (the poll path's ``FleetCache``,
the one place that decides invalidation). The SQL of each aggregate lives in its own module
(nodes, functions, targets, syncs); :class:`appliance.store.store.Store` joins them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from appliance.store.db import (
    Connection,
    Database,
    Row,
    SerializationFailure,
)
from appliance.store.migrate import run_migrations
from appliance.store.node_changes import NodeChangeFeed, prune_node_changes, record_node_changes
from appliance.store.records import FleetChange
from appliance.store.transaction import Transaction
from edgesync.errors import ServiceUnavailable, ValidationFailed
from edgesync.protocol import format_time

T = TypeVar("T")

WRITE_ATTEMPTS = 8
# fleet_changes keeps this many generations: enough for any notifier that is
# merely slow (one that falls further behind notifies the whole fleet instead).
FLEET_CHANGES_KEPT = 1000


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


class StoreBase:
    """Transactions, migrations and the fleet generation over a :class:`Database`."""

    def __init__(self, db: Database, on_retry: Callable[[], object] | None = None) -> None:
        self.db = db
        # Write transactions lost to a serialization conflict and run again
        # (``on_retry`` is called for each: the app counts them in /metrics).
        self.serialization_retries = 0
        self._on_retry = on_retry
        # Called with every write transaction that changed what caches hold
        # (bumped the generation or touched a node's stamp), committed or not.
        self._commit_listeners: list[Callable[[Transaction], None]] = []

    # -- lifecycle ------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply pending control-plane migrations; return the schema version."""
        return await run_migrations(self.db, self._write)

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

    async def _write(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``body`` in a write transaction (retried on conflicts), then tell the
        commit listeners what its last run changed. A failed transaction is told
        too (``committed`` False): its commit may be ambiguous, so caches forget."""
        last: list[Transaction] = []

        async def run(connection: Connection) -> T:
            tx = Transaction(connection)
            last[:] = [tx]
            result = await body(tx)
            if tx.touched and self.db.shared:
                # The other replicas' caches learn it from the change feed; last
                # statement, so the row's time is as close to the commit as can be.
                await record_node_changes(tx, tx.touched)
            return result

        try:
            result = await self._write_with_retries(run)
            if last:
                last[0].committed = True
            return result
        finally:
            if last and last[0].changes_caches:
                for listener in list(self._commit_listeners):
                    listener(last[0])

    async def _bump_generation(
        self, tx: Transaction, reason: str, node_ids: list[str] | None = None
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
                format_time(now()),
            ),
        )
        await tx.execute(
            "DELETE FROM fleet_changes WHERE generation <= ?", (generation - FLEET_CHANGES_KEPT,)
        )
        tx.bump(reason)

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
                (name, make(), format_time(now())),
            )
            stored = await tx.fetchone("SELECT value FROM secrets WHERE name = ?", (name,))
            assert stored is not None
            return str(stored["value"])

        return await self._write(create)

    def add_commit_listener(self, listener: Callable[[Transaction], None]) -> None:
        """Call ``listener(tx)`` after each write of this process that changed what
        caches hold (``tx.bumped``, ``tx.touched``)."""
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: Callable[[Transaction], None]) -> None:
        if listener in self._commit_listeners:
            self._commit_listeners.remove(listener)

    async def fleet_changes(self, *, after: int, upto: int, limit: int = 1000) -> list[FleetChange]:
        """Recorded changes with ``after < generation <= upto``, oldest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM fleet_changes WHERE generation > ? AND generation <= ?"
            " ORDER BY generation LIMIT ?",
            (after, upto, limit),
        )
        return [FleetChange.from_row(row) for row in rows]

    def node_change_feed(self) -> NodeChangeFeed:
        """A reader of the nodes other replicas changed (one per watching replica)."""
        return NodeChangeFeed(self.db)

    async def prune_node_changes(self) -> int:
        """Drop change-feed rows no reader's window reaches any more."""
        return await self._write(prune_node_changes)

    async def generation(self) -> int:
        """The fleet generation as the database has it now (the FleetCache caches it)."""
        row = await self.db.fetchone("SELECT generation FROM fleet_state WHERE id = 1")
        return int(row["generation"]) if row else 0

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


def now() -> datetime:
    from edgesync.protocol import utcnow

    return utcnow()
