"""The small database interface the store's SQL runs on, chosen by URL scheme.

SQL is written once, with ``?`` placeholders and portable constructs only
(DESIGN.md); each driver adapts the placeholder style and maps its driver's
errors onto :class:`DatabaseUnavailable` / :class:`IntegrityViolation` /
:class:`SerializationFailure` / :class:`AmbiguousResult`, so the store never
sees a driver exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

Row = dict[str, Any]
Params = Sequence[Any]


class DatabaseError(Exception):
    """Base of the driver-neutral database errors."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or answered with an I/O failure."""


class IntegrityViolation(DatabaseError):
    """A unique or foreign key constraint refused the write."""


class SerializationFailure(DatabaseError):
    """The transaction lost a SERIALIZABLE conflict (SQLSTATE 40001); retry it."""


class AmbiguousResult(DatabaseUnavailable):
    """The work may or may not have committed (SQLSTATE 40003, or XXA00 for DDL).

    Never re-run blindly: only an idempotent statement may be repeated (see
    ``retry.py``). Anything else reaches the client as a retryable 503.
    """


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a database's connections, for the metrics endpoint."""

    in_use: int
    size: int  # open (or opening) connections
    max_size: int
    waiting: int  # requests waiting for a connection


class Connection(Protocol):
    """What a transaction body may do: run statements inside the transaction."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Params = ()) -> int: ...


class Database(Connection, Protocol):
    """A pool or connection behind one URL.

    ``shared`` is True when other processes may write the same database (the
    replicas of a PostgreSQL/CockroachDB deployment): in-process caches must
    then revalidate against the database instead of trusting their own writes.
    """

    dialect: str
    shared: bool

    def transaction(self) -> AbstractAsyncContextManager[Connection]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    def connections_in_use(self) -> int: ...

    def pool_stats(self) -> PoolStats: ...


async def open_database(url: str) -> Database:
    """Open the database named by ``url`` (``sqlite:///path`` or ``postgresql://``)."""
    if url.startswith("sqlite:"):
        from appliance.store.sqlite import SqliteDatabase

        return await SqliteDatabase.open(url.removeprefix("sqlite://"))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from appliance.store.postgres import PostgresDatabase
        except ImportError as exc:  # pragma: no cover - psycopg missing from this install
            raise ValueError("the PostgreSQL store needs psycopg and psycopg_pool") from exc
        database: Database = await PostgresDatabase.open(url)
        return database
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
