"""CockroachDB's failure modes, injected: CockroachDB cannot run here, so a test
double of the psycopg connection raises its SQLSTATEs (XXA00, 40001, 40003) in
front of, or after, the real statement on the real PostgreSQL.

"After" is the hard case: the work was done, and the client is told it may not
have been (an ambiguous result).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from test_store import add_node, enrollment

from appliance.store import postgres
from appliance.store.db import AmbiguousResult, DatabaseUnavailable, open_database
from appliance.store.migrate import migration_version
from appliance.store.schema import MIGRATIONS
from appliance.store.store import Store

pytestmark = pytest.mark.databases("postgresql")


class PartiallyCommitted(psycopg.errors.InternalError):
    """CockroachDB's XXA00 (psycopg has no class of its own for it)."""

    sqlstate = "XXA00"


@dataclass
class Fault:
    """Raise ``error`` for statements matching ``when``, ``times`` times,
    ``after`` running them (the work done) or instead of running them."""

    when: Callable[[str], bool]
    error: Callable[[], Exception]
    after: bool
    times: int = 1
    hits: list[str] = field(default_factory=list)


class FaultyConnection:
    """A psycopg connection that fails as CockroachDB would, per the faults given."""

    def __init__(self, real: Any, faults: list[Fault]) -> None:
        self._real = real
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def execute(self, query: str, params: Any = None) -> Any:
        fault = next((f for f in self._faults if len(f.hits) < f.times and f.when(query)), None)
        if fault is None:
            return await self._real.execute(query, params)
        fault.hits.append(query)
        if fault.after:
            await self._real.execute(query, params)
        raise fault.error()


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> list[Fault]:
    injected: list[Fault] = []
    real = postgres.PostgresDatabase._connection

    @contextlib.asynccontextmanager
    async def connection(self: postgres.PostgresDatabase) -> AsyncIterator[Any]:
        async with real(self) as connection:
            yield FaultyConnection(connection, injected)

    monkeypatch.setattr(postgres.PostgresDatabase, "_connection", connection)
    return injected


def _matching(*words: str) -> Callable[[str], bool]:
    return lambda query: all(word in query for word in words)


async def test_ddl_partially_committed_is_run_again_and_the_migration_completes(
    database_url: str, faults: list[Fault]
) -> None:
    """XXA00 after CREATE TABLE, ADD COLUMN and the record: each ran; each runs
    again (idempotent, the column looked up first) and nothing fails."""
    for words in (("CREATE TABLE IF NOT EXISTS nodes",), ("ADD COLUMN status",)):
        faults.append(Fault(_matching(*words), lambda: PartiallyCommitted("xxa00"), after=True))
    faults.append(
        Fault(
            _matching("INSERT INTO control_plane_migrations"), lambda: PartiallyCommitted("x"), True
        )
    )
    database = await open_database(database_url)
    try:
        assert await Store(database).migrate() == MIGRATIONS[-1].version
        assert all(len(fault.hits) == 1 for fault in faults)
        columns = await database.fetchall(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'functions'"
        )
        assert [c["column_name"] for c in columns].count("status") == 1
    finally:
        await database.close()


async def test_plain_reads_are_retried_on_serialization_failures(
    database_url: str, faults: list[Fault]
) -> None:
    database = await open_database(database_url)
    try:
        await Store(database).migrate()
        faults.append(
            Fault(
                _matching("MAX(version)"),
                lambda: psycopg.errors.SerializationFailure("restart transaction"),
                after=False,
                times=3,
            )
        )
        assert await migration_version(database) == MIGRATIONS[-1].version
        assert len(faults[0].hits) == 3
    finally:
        await database.close()


async def test_an_ambiguous_commit_is_not_run_again_and_counts_once(
    database_url: str, faults: list[Fault]
) -> None:
    """40003 at COMMIT of an enrollment (the use was spent): the store surfaces a
    retryable unavailability and never re-runs the increment itself."""
    database = await open_database(database_url)
    try:
        store = Store(database)
        await store.migrate()
        token_id = await enrollment(store, max_uses=5)
        faults.append(
            Fault(
                _matching("COMMIT"),
                lambda: psycopg.errors.StatementCompletionUnknown("result is ambiguous"),
                after=True,
            )
        )
        with pytest.raises(AmbiguousResult) as raised:
            await add_node(store, token_id)
        assert isinstance(raised.value, DatabaseUnavailable)  # a 503 the client may retry
        record = await store.get_enrollment_token(token_id)
        assert record is not None and record.uses == 1
        assert len(faults[0].hits) == 1
    finally:
        await database.close()
