"""The node change feed: which nodes' stamps moved, for the other replicas' caches.

A replica learns its own writes from its commit listeners; the others' only by
reading the database (CockroachDB has no LISTEN/NOTIFY, no advisory locks). So
every write transaction that touches a node's stamp (token rotation, an applied
ack) also inserts ``(id, node_id, changed_at)`` into ``node_changes``, as its
last statement, in the same transaction. ``changed_at`` is the database's clock
(one clock for every replica), and ``id`` is random, so there is no hot counter
row for concurrent writers to queue on.

Commit order is not ``changed_at`` order: a transaction may commit a moment
after a reader saw a later row. So :class:`NodeChangeFeed` never keeps a
high-water mark: each read takes every row of the last ``FEED_WINDOW_SECONDS``
by the database's clock (one indexed range read) and hands on the ids it has
not seen yet. A row is missed only if its transaction took longer than the
window between that insert and its commit, or the reader missed more than the
window: the FleetCache forgets every stamp after such a gap (``FEED_GAP_SECONDS``).

Only a shared database records changes: a single process (SQLite, held by the
data-dir lock) sees every write itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from appliance.store.db import Database
from appliance.store.transaction import Transaction

FEED_WINDOW_SECONDS = 5.0
# A reader whose previous read began longer ago than this may have let rows
# slip out of the window unread: the cache then forgets all stamps.
FEED_GAP_SECONDS = 2.5
# Rows are pruned once well out of every reader's window.
FEED_KEPT_SECONDS = 60.0

# The database's clock as epoch seconds (PostgreSQL and CockroachDB alike;
# clock_timestamp(), not now(): the statement's moment, not the transaction's start).
_DB_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


async def record_node_changes(tx: Transaction, node_ids: Iterable[str]) -> None:
    """Insert one feed row per node, inside ``tx`` (call it last, just before commit)."""
    for node_id in sorted(node_ids):
        await tx.execute(
            f"INSERT INTO node_changes (id, node_id, changed_at) VALUES (?, ?, {_DB_NOW})",
            (uuid.uuid4().hex, node_id),
        )


async def prune_node_changes(tx: Transaction) -> int:
    """Delete rows out of every reader's window; return how many."""
    return await tx.execute(
        f"DELETE FROM node_changes WHERE changed_at < {_DB_NOW} - ?", (FEED_KEPT_SECONDS,)
    )


class NodeChangeFeed:
    """One replica's reader of ``node_changes``: the nodes changed since its last read."""

    def __init__(self, db: Database, window_seconds: float = FEED_WINDOW_SECONDS) -> None:
        self._db = db
        self._window = window_seconds
        self._seen: set[str] = set()  # row ids inside the window at the last read
        self.reads = 0

    async def read(self) -> set[str]:
        """The ids of nodes with a change row this reader has not handed on yet."""
        rows = await self._db.fetchall(
            f"SELECT id, node_id FROM node_changes WHERE changed_at > {_DB_NOW} - ?",
            (self._window,),
        )
        self.reads += 1
        ids = {str(row["id"]) for row in rows}
        fresh = {str(row["node_id"]) for row in rows if row["id"] not in self._seen}
        # A row not returned now has left the window and never comes back.
        self._seen = ids
        return fresh
