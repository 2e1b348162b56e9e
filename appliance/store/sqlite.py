"""The embedded SQLite driver (aiosqlite), for a control plane with nothing installed.

One writer connection serialised by an asyncio lock (SQLite allows one writer)
and one reader connection; WAL mode lets the reader see committed data while a
write transaction is open. A SQLite file belongs to one ``edgesync serve``
process (the data-dir lock enforces it), so ``shared`` is False and the app may
trust its in-process caches.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiosqlite

from appliance.store.db import (
    Connection,
    DatabaseUnavailable,
    IntegrityViolation,
    Params,
    PoolStats,
    Row,
)

# aiosqlite raises ValueError once its connection is closed (e.g. during shutdown):
# that is an unavailable database too (503, retryable), not an internal error.
_DRIVER_ERRORS = (sqlite3.Error, ValueError)


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityViolation(str(exc))
    return DatabaseUnavailable(str(exc))


class _SqliteConnection:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    # A read runs, fetches and finishes in ONE call on aiosqlite's thread. Run as
    # separate calls (execute, then fetch, then close), another coroutine's query
    # on the same connection could step in between and run inside this one's open
    # read snapshot, not seeing a write committed before it started.
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            rows = await self._connection.execute_fetchall(sql, params)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        return [dict(row) for row in rows]

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            async with self._connection.execute(sql, params) as cursor:
                return cursor.rowcount
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc


class SqliteDatabase(_SqliteConnection):
    dialect = "sqlite"
    shared = False

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        super().__init__(reader)
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._in_use = 0
        self._waiting = 0
        # Set when a transaction ended abnormally: the next one first settles the writer.
        self._unsettled = False

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        _private_files(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        writer = await aiosqlite.connect(path, isolation_level=None)
        writer.row_factory = sqlite3.Row
        await writer.execute("PRAGMA journal_mode=WAL")
        await writer.execute("PRAGMA synchronous=NORMAL")
        await writer.execute("PRAGMA busy_timeout=5000")
        await writer.execute("PRAGMA foreign_keys=ON")
        reader = await aiosqlite.connect(path, isolation_level=None)
        reader.row_factory = sqlite3.Row
        await reader.execute("PRAGMA busy_timeout=5000")
        return cls(writer, reader)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        self._in_use += 1
        try:
            return await super().fetchone(sql, params)
        finally:
            self._in_use -= 1

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self._in_use += 1
        try:
            return await super().fetchall(sql, params)
        finally:
            self._in_use -= 1

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        self._waiting += 1
        try:
            await self._write_lock.acquire()
        finally:
            self._waiting -= 1
        try:
            self._in_use += 1
            # Transaction control goes through the translating connection too, so a
            # closed or locked database is DatabaseUnavailable. The outer clause
            # stays narrow: a ValueError of the body is a bug, not unavailability.
            tx = _SqliteConnection(self._writer)
            try:
                if self._unsettled:
                    await self._settle()
                # IMMEDIATE takes the write lock now, so reads inside the
                # transaction cannot be invalidated by a later lock upgrade.
                await tx.execute("BEGIN IMMEDIATE")
                try:
                    yield tx
                except BaseException:
                    await tx.execute("ROLLBACK")
                    raise
                await tx.execute("COMMIT")
            except sqlite3.Error as exc:
                self._unsettled = True
                raise _translate(exc) from exc
            except BaseException:
                # A cancelled BEGIN, COMMIT or ROLLBACK still runs on aiosqlite's
                # thread after this task has gone: the writer may be left inside
                # a transaction nobody will end. The next transaction settles it.
                self._unsettled = True
                raise
            finally:
                self._in_use -= 1
        finally:
            self._write_lock.release()

    async def _settle(self) -> None:
        """End whatever transaction an interrupted one left open on the writer."""
        # aiosqlite runs calls in order: once this one answers, every call queued
        # before it (a cancelled BEGIN among them) has run.
        await self._writer.execute_fetchall("SELECT 1")
        if self._writer.in_transaction:
            await self._writer.rollback()
        self._unsettled = False

    async def ping(self) -> None:
        await self.fetchone("SELECT 1 AS ok")

    def connections_in_use(self) -> int:
        return self._in_use

    def pool_stats(self) -> PoolStats:
        # Two connections, always open: one writer (behind the lock) and one reader.
        return PoolStats(self._in_use, 2, 2, self._waiting)

    async def close(self) -> None:
        for connection in (self._reader, self._writer):
            try:
                await connection.close()
            except Exception:
                pass


def _private_files(path: str) -> None:
    """The database (with both signing keys) and its -wal/-shm: 0600 whatever the umask.

    SQLite creates -wal and -shm with the database file's mode, so creating that
    file 0600 first covers them; existing files are narrowed too.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with suppress(FileNotFoundError):
            if stat.S_IMODE(os.stat(name).st_mode) & 0o077:
                os.chmod(name, 0o600)
