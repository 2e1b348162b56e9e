"""The store's core: transactions in a retry loop, the fleet generation.

Runs unchanged on SQLite and PostgreSQL/CockroachDB (see ``db.py``). Every write
goes through :meth:`StoreBase._write`, a transaction in a retry loop on
serialization failures (CockroachDB's SQLSTATE 40001). Every change that alters
plans bumps the fleet generation in the same transaction; the plan cache of
every replica is keyed by it. The SQL of each aggregate lives in its own module
(nodes, functions, targets, syncs); :class:`appliance.store.store.Store` joins them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

from appliance.store.db import (
    Connection,
    Database,
    Row,
    SerializationFailure,
)
from appliance.store.migrate import run_migrations
from appliance.store.records import FleetChange, NodeStamp
from edgesync.errors import ServiceUnavailable, ValidationFailed
from edgesync.protocol import format_time

T = TypeVar("T")

WRITE_ATTEMPTS = 8
# fleet_changes keeps this many generations: enough for any notifier that is
# merely slow (one that falls further behind notifies the whole fleet instead).
FLEET_CHANGES_KEPT = 1000
# Set by _write for the transaction body it runs: did the body bump the generation?
_BUMPED: ContextVar[list[bool] | None] = ContextVar("edgesync_generation_bumped", default=None)


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
                format_time(now()),
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
                (name, make(), format_time(now())),
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
