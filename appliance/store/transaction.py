"""One write transaction, and what it changed that caches must forget.

The store's write bodies run their SQL on a :class:`Transaction`. Besides the
statements, it carries what the body changed for the poll path's caches: the
fleet generation (``bumped``, with the reasons) and the nodes whose stamp
(token, state revision, release) moved (``touched``). After the transaction
ends, the store hands it to its commit listeners (the ``FleetCache``), so the
one place that decides invalidation learns it explicitly, not through a
context variable.
"""

from __future__ import annotations

from appliance.store.db import Connection, Params, Row


class Transaction:
    """A :class:`Connection` inside one write transaction, plus its change record."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.bumped: list[str] = []  # reasons of fleet-generation bumps, in order
        self.touched: set[str] = set()  # node ids whose stamp changed
        # False when the transaction failed: the listener must then assume
        # whatever the body marked may have committed (an ambiguous commit).
        self.committed = False

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._connection.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._connection.fetchall(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._connection.execute(sql, params)

    def bump(self, reason: str) -> None:
        self.bumped.append(reason)

    def touch(self, node_id: str) -> None:
        self.touched.add(node_id)

    @property
    def changes_caches(self) -> bool:
        return bool(self.bumped or self.touched)
