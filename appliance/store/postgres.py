"""The PostgreSQL/CockroachDB driver: psycopg 3 async over a connection pool.

Every ``edgesync serve`` replica of a deployment opens its own pool on the same
database, so ``shared`` is True: the store revalidates its caches against the
database instead of trusting its own writes.

* Placeholders: the store's SQL uses ``?``; psycopg wants ``%s`` (and a literal
  ``%`` doubled). :func:`to_pyformat` rewrites outside quotes and comments.
* Writes run at SERIALIZABLE (CockroachDB's default; on PostgreSQL we ask for
  it) and may end in SQLSTATE 40001 → :class:`SerializationFailure`, which
  the store's write loop retries. Reads outside a transaction run on
  autocommit connections and are retried here on 40001 (``retry.py``).
* 40003 and XXA00 (the outcome is unknown) → :class:`AmbiguousResult`: never
  retried blindly; a 503 unless the statement is idempotent (migrations).
* A lost connection (database restart, failover) is noticed on use: the pool is
  swept and the read, or a transaction whose BEGIN failed, is tried once more on
  a fresh connection. While the database is down, statements end in
  :class:`DatabaseUnavailable` (503, retryable) after at most ``pool_timeout``;
  TCP keepalives end a query whose server vanished without a word (~30 s).

URL query parameters read here (and removed before connecting):
``pool_min`` (default 1), ``pool_max`` (10), ``pool_timeout`` (seconds a request
waits for a connection, 5), ``pool_reconnect_timeout`` (seconds one connection
slot keeps retrying in the background before the pool lets the next request try
afresh, 10), ``lock_timeout`` (seconds a statement waits for a row or table
lock before giving up with a 503, like SQLite's busy timeout: 5; 0 leaves the
server's setting alone). libpq's ``connect_timeout`` defaults to 5 seconds here,
and its keepalives to a probe after 15 s idle, every 5 s, 3 times.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from appliance.store.db import (
    AmbiguousResult,
    Connection,
    DatabaseError,
    DatabaseUnavailable,
    IntegrityViolation,
    Params,
    PoolStats,
    Row,
    SerializationFailure,
)
from appliance.store.retry import READ_ATTEMPTS, backoff

T = TypeVar("T")
PgConnection = AsyncConnection[DictRow]

# SQLSTATEs of a lost transaction that is safe to run again: serialization
# failure (CockroachDB's retry error too) and deadlock.
_RETRY_STATES = frozenset({"40001", "40P01"})
# SQLSTATEs of work that may or may not have committed: CockroachDB's
# "statement completion unknown" and its partially committed DDL transaction.
_AMBIGUOUS_STATES = frozenset({"40003", "XXA00"})
# SQLSTATE classes meaning "the database cannot serve now": connection exception,
# insufficient resources, operator intervention (shutdown, cancel), system error.
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})


@dataclass(frozen=True)
class PoolSettings:
    min_size: int = 1
    max_size: int = 10
    timeout: float = 5.0
    reconnect_timeout: float = 10.0
    lock_timeout: float = 5.0


# libpq settings edgesync chooses unless the URL does: a bounded connection
# attempt, and keepalives that notice a server gone without closing the socket
# (the kernel's defaults would wait over two hours).
_LIBPQ_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

_SETTINGS = {
    "pool_min": ("min_size", int),
    "pool_max": ("max_size", int),
    "pool_timeout": ("timeout", float),
    "pool_reconnect_timeout": ("reconnect_timeout", float),
    "lock_timeout": ("lock_timeout", float),
}


def parse_url(url: str) -> tuple[str, PoolSettings]:
    """Split ``url`` into the libpq conninfo and the pool settings it carries."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _SETTINGS:
            kept.append((key, value))
            continue
        name, kind = _SETTINGS[key]
        try:
            values[name] = kind(value)
        except ValueError:
            raise ValueError(f"database URL parameter {key} must be a number") from None
    settings = PoolSettings(**values)
    if settings.min_size < 0 or settings.max_size < max(1, settings.min_size):
        raise ValueError("database URL needs 0 <= pool_min <= pool_max and pool_max >= 1")
    if settings.timeout <= 0 or settings.reconnect_timeout <= 0 or settings.lock_timeout < 0:
        raise ValueError(
            "database URL needs pool_timeout > 0, pool_reconnect_timeout > 0, lock_timeout >= 0"
        )
    given = {key for key, _ in kept}
    for key, value in _LIBPQ_DEFAULTS.items():
        if key not in given:
            kept.append((key, value))
    conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
    return conninfo, settings


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` → ``%s`` and ``%`` → ``%%``, except ``?`` inside quotes and comments.

    psycopg scans the whole text for ``%`` (quotes included), so every literal
    ``%`` is doubled; a ``?`` in a string literal, a quoted identifier or a
    comment is left alone.
    """
    out: list[str] = []
    index, length = 0, len(sql)
    while index < length:
        char = sql[index]
        if char in "'\"":
            end = sql.find(char, index + 1)
            end = length if end < 0 else end + 1
            out.append(sql[index:end].replace("%", "%%"))
            index = end
        elif sql.startswith("--", index):
            end = sql.find("\n", index)
            end = length if end < 0 else end
            out.append(sql[index:end].replace("%", "%%"))
            index = end
        elif sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            end = length if end < 0 else end + 2
            out.append(sql[index:end].replace("%", "%%"))
            index = end
        else:
            out.append("%s" if char == "?" else "%%" if char == "%" else char)
            index += 1
    return "".join(out)


def _translate(exc: Exception, *, in_transaction: bool = True) -> DatabaseError:
    """Map a psycopg or pool error onto the store's driver-neutral errors."""
    state = getattr(exc, "sqlstate", None) or ""
    if state in _RETRY_STATES:
        # Outside a transaction there is no loop to retry in: the caller may
        # retry later, like any other unavailability.
        if in_transaction:
            return SerializationFailure(str(exc))
        return DatabaseUnavailable(str(exc))
    if state in _AMBIGUOUS_STATES:
        return AmbiguousResult(str(exc))
    if state.startswith("23"):
        return IntegrityViolation(str(exc))
    if (
        isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, PoolClosed))
        or state[:2] in _UNAVAILABLE_CLASSES
    ):
        return DatabaseUnavailable(str(exc) or type(exc).__name__)
    # Syntax, type or data errors: bugs, not unavailability (500, not 503).
    return DatabaseError(f"{type(exc).__name__}: {exc}")


async def _fetchone(cursor: AsyncCursor[DictRow]) -> Row | None:
    return await cursor.fetchone()


async def _fetchall(cursor: AsyncCursor[DictRow]) -> list[Row]:
    return list(await cursor.fetchall())


async def _rowcount(cursor: AsyncCursor[DictRow]) -> int:
    return cursor.rowcount


class _TransactionConnection:
    """The statements of one open transaction, on its one connection."""

    def __init__(self, connection: PgConnection) -> None:
        self._connection = connection

    async def _run(
        self, sql: str, params: Params, result: Callable[[AsyncCursor[DictRow]], Awaitable[T]]
    ) -> T:
        try:
            cursor = await self._connection.execute(to_pyformat(sql), tuple(params))
            return await result(cursor)
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._run(sql, params, _fetchone)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._run(sql, params, _fetchall)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._run(sql, params, _rowcount)


class PostgresDatabase:
    dialect = "postgresql"
    shared = True

    def __init__(self, pool: AsyncConnectionPool[PgConnection], settings: PoolSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._in_use = 0

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        """Open a pool on ``url`` and wait for its first connections."""
        conninfo, settings = parse_url(url)
        # No server-side prepared statements: after another replica's migration
        # adds a column, PostgreSQL refuses a prepared ``SELECT *`` on every old
        # connection ("cached plan must not change result type", 0A000) until it
        # is recycled. Parsing each statement costs far less than that outage.
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": None,
        }
        if "application_name" not in conninfo:
            kwargs["application_name"] = "edgesync"
        lock_timeout_ms = round(settings.lock_timeout * 1000)

        async def configure(connection: PgConnection) -> None:
            # Waiting on another transaction's lock ends in SQLSTATE 55P03 (503,
            # retryable) instead of holding the request and its connection.
            await connection.execute(f"SET lock_timeout = '{lock_timeout_ms:d}ms'")

        pool = AsyncConnectionPool(
            conninfo,
            connection_class=AsyncConnection[DictRow],
            kwargs=kwargs,
            configure=configure if lock_timeout_ms else None,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.timeout,
            reconnect_timeout=settings.reconnect_timeout,
            name="edgesync",
            open=False,
        )
        try:
            await pool.open(wait=settings.min_size > 0, timeout=settings.timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise DatabaseUnavailable(
                f"cannot connect to the database within {settings.timeout:g} s"
            ) from exc
        return cls(pool, settings)

    # -- connections ------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[PgConnection]:
        try:
            async with self._pool.connection() as connection:
                self._in_use += 1
                try:
                    yield connection
                finally:
                    self._in_use -= 1
        except (PoolTimeout, PoolClosed) as exc:
            raise DatabaseUnavailable(str(exc)) from exc

    async def _sweep(self) -> None:
        """One connection was found dead: drop every other dead one in the pool too."""
        try:
            await self._pool.check()
        except (psycopg.Error, PoolClosed):
            pass

    async def _autocommit(
        self, sql: str, params: Params, result: Callable[[AsyncCursor[DictRow]], Awaitable[T]]
    ) -> T:
        """A read on its own: again on a fresh connection once its connection
        turned out dead, and again (with backoff) after a serialization failure,
        which CockroachDB returns for reads whose results outgrew its buffer."""
        query, values = to_pyformat(sql), tuple(params)
        reconnected = False
        for attempt in range(READ_ATTEMPTS):
            await asyncio.sleep(backoff(attempt))
            async with self._connection() as connection:
                try:
                    cursor = await connection.execute(query, values)
                    return await result(cursor)
                except psycopg.Error as exc:
                    dead = connection.closed and not reconnected
                    lost = getattr(exc, "sqlstate", None) in _RETRY_STATES
                    if not (dead or (lost and attempt < READ_ATTEMPTS - 1)):
                        raise _translate(exc, in_transaction=False) from exc
                    reconnected = reconnected or dead
            if connection.closed:
                await self._sweep()
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._autocommit(sql, params, _fetchone)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._autocommit(sql, params, _fetchall)

    async def execute(self, sql: str, params: Params = ()) -> int:
        # A write is not repeated blindly after a lost connection: it runs as a
        # transaction, whose BEGIN alone may be retried.
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    # -- transactions -----------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        for attempt in range(2):
            async with self._connection() as connection:
                try:
                    await connection.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                except psycopg.Error as exc:
                    if not (connection.closed and attempt == 0):
                        raise _translate(exc) from exc
                else:
                    async with self._transaction_body(connection) as tx:
                        yield tx
                    return
            await self._sweep()

    @asynccontextmanager
    async def _transaction_body(self, connection: PgConnection) -> AsyncIterator[Connection]:
        try:
            yield _TransactionConnection(connection)
        except BaseException:
            await _rollback(connection)
            raise
        if connection.info.transaction_status == TransactionStatus.INERROR:
            # PostgreSQL would answer COMMIT with a silent ROLLBACK: the body
            # swallowed a failed statement. Never report that as committed.
            await _rollback(connection)
            raise DatabaseError("the transaction failed; it was rolled back")
        try:
            await connection.execute("COMMIT")
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    # -- operations -------------------------------------------------------------------

    async def ping(self) -> None:
        await self.fetchone("SELECT 1 AS ok")

    def connections_in_use(self) -> int:
        return self._in_use

    def pool_stats(self) -> PoolStats:
        stats = self._pool.get_stats()
        return PoolStats(
            in_use=self._in_use,
            size=stats.get("pool_size", 0),
            max_size=self._settings.max_size,
            waiting=stats.get("requests_waiting", 0),
        )

    async def close(self) -> None:
        await self._pool.close(timeout=5.0)


# A ROLLBACK answers in milliseconds on a live connection; one to a server that
# went away mid-transaction may never answer, and the task rolling back (often a
# cancelled one, at shutdown) must not wait for it forever.
ROLLBACK_TIMEOUT = 5.0


async def _rollback(connection: PgConnection) -> None:
    """Roll back if the connection still can; a dead one the pool discards anyway."""
    if connection.closed:
        return
    try:
        async with asyncio.timeout(ROLLBACK_TIMEOUT):
            await connection.execute("ROLLBACK")
    except psycopg.Error:
        pass
    except TimeoutError:
        await connection.close()  # the pool discards a closed connection
