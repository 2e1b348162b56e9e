"""What only the PostgreSQL/CockroachDB driver has: placeholders, URL settings,
SERIALIZABLE conflicts between replicas, and a database that goes away and comes back.

The store's behaviour itself is covered by ``test_store.py``, which runs on
every database kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
from postgres_support import PostgresSandbox
from test_store import add_function, add_node, enrollment, function, migration

from appliance.store.db import (
    AmbiguousResult,
    Connection,
    DatabaseError,
    DatabaseUnavailable,
    IntegrityViolation,
    SerializationFailure,
    open_database,
)
from appliance.store.postgres import PoolSettings, _translate, parse_url, to_pyformat
from appliance.store.schema import MIGRATIONS
from appliance.store.store import Store
from edgesync.errors import SchemaVersionConflict, ServiceUnavailable
from edgesync.protocol import utcnow

# -- pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("SELECT 'why?' AS q, x FROM t WHERE y = ?", "SELECT 'why?' AS q, x FROM t WHERE y = %s"),
        ("SELECT 'it''s ?' WHERE a = ?", "SELECT 'it''s ?' WHERE a = %s"),
        ('SELECT "odd?name" FROM t WHERE a = ?', 'SELECT "odd?name" FROM t WHERE a = %s'),
        (
            "SELECT a % 2, '50%' FROM t WHERE b LIKE ?",
            "SELECT a %% 2, '50%%' FROM t WHERE b LIKE %s",
        ),
        ("SELECT 1 -- really?\nWHERE a = ?", "SELECT 1 -- really?\nWHERE a = %s"),
        ("SELECT /* ? */ a FROM t WHERE b = ?", "SELECT /* ? */ a FROM t WHERE b = %s"),
        ("SELECT 'unterminated ?", "SELECT 'unterminated ?"),
    ],
)
def test_placeholders_become_pyformat_outside_quotes_and_comments(sql: str, expected: str) -> None:
    assert to_pyformat(sql) == expected


def test_url_settings_are_read_and_stripped() -> None:
    conninfo, settings = parse_url(
        "postgresql://u:secret@db:26257/edgesync?sslmode=require&pool_min=2&pool_max=20"
        "&pool_timeout=1.5&pool_reconnect_timeout=30&lock_timeout=0"
    )
    assert conninfo == (
        "postgresql://u:secret@db:26257/edgesync?sslmode=require&connect_timeout=5"
        "&keepalives_idle=15&keepalives_interval=5&keepalives_count=3"
    )
    assert settings == PoolSettings(
        min_size=2, max_size=20, timeout=1.5, reconnect_timeout=30, lock_timeout=0
    )
    conninfo, settings = parse_url("postgres://db/x?connect_timeout=2&keepalives_idle=60")
    assert conninfo == (
        "postgres://db/x?connect_timeout=2&keepalives_idle=60&keepalives_interval=5"
        "&keepalives_count=3"
    )
    assert settings == PoolSettings()


@pytest.mark.parametrize(
    "query", ["pool_max=0", "pool_min=5&pool_max=2", "pool_min=-1", "pool_timeout=0", "pool_max=x"]
)
def test_bad_url_settings_are_refused_without_echoing_the_url(query: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_url(f"postgresql://u:secret@db/x?{query}")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.errors.SerializationFailure("conflict"), SerializationFailure),
        (psycopg.errors.DeadlockDetected("deadlock"), SerializationFailure),
        (psycopg.errors.UniqueViolation("dup"), IntegrityViolation),
        (psycopg.errors.ForeignKeyViolation("fk"), IntegrityViolation),
        (psycopg.errors.LockNotAvailable("lock timeout"), DatabaseUnavailable),
        (psycopg.errors.AdminShutdown("terminating"), DatabaseUnavailable),
        (psycopg.errors.QueryCanceled("statement timeout"), DatabaseUnavailable),
        (psycopg.OperationalError("connection refused"), DatabaseUnavailable),
        (psycopg.InterfaceError("the connection is closed"), DatabaseUnavailable),
        (psycopg.errors.UndefinedTable("no such table"), DatabaseError),
        (psycopg.errors.StatementCompletionUnknown("result is ambiguous"), AmbiguousResult),
    ],
)
def test_driver_errors_map_onto_the_store_errors(error: Exception, expected: type) -> None:
    translated = _translate(error)
    assert type(translated) is expected
    # A lost serialization race outside a transaction has no loop to retry it in.
    if expected is SerializationFailure:
        assert type(_translate(error, in_transaction=False)) is DatabaseUnavailable


# -- on PostgreSQL ---------------------------------------------------------------------

pytestmark_pg = pytest.mark.databases("postgresql")


@pytest.fixture
def replica_url(database_kind: str, postgres: PostgresSandbox) -> Callable[..., str]:
    """``replica_url(**settings)``: URLs of one fresh database (a schema), as the
    replicas of one deployment would each have."""
    schema = postgres.new_schema()
    return lambda **params: postgres.url_for(schema, **params)


@contextlib.asynccontextmanager
async def opened(url: str, **kwargs: object) -> AsyncIterator[Store]:
    database = await open_database(url)
    try:
        yield Store(database, **kwargs)  # type: ignore[arg-type]
    finally:
        await database.close()


@pytestmark_pg
async def test_replicas_migrating_a_fresh_database_together_both_succeed(
    postgres: PostgresSandbox, database_kind: str
) -> None:
    latest = MIGRATIONS[-1].version
    for _ in range(3):  # each round on a fresh database: the race is at the start
        schema = postgres.new_schema()
        async with opened(postgres.url_for(schema)) as a, opened(postgres.url_for(schema)) as b:
            assert await asyncio.gather(a.migrate(), b.migrate()) == [latest, latest]
            rows = await a.db.fetchall("SELECT version FROM control_plane_migrations")
            assert sorted(row["version"] for row in rows) == [m.version for m in MIGRATIONS]


@pytestmark_pg
async def test_a_read_then_write_race_is_retried_not_lost(replica_url: Callable[..., str]) -> None:
    """Two replicas read the generation, then both write read + 1: SERIALIZABLE
    aborts one (SQLSTATE 40001) and the write loop runs it again on fresh data."""
    calls: list[int] = []
    async with (
        opened(replica_url()) as a,
        opened(replica_url(), on_retry=lambda: calls.append(1)) as b,
    ):
        await a.migrate()
        start = await a.generation()
        barrier = asyncio.Barrier(2)

        def bump(first_attempts: set[str], name: str) -> Callable[[Connection], object]:
            async def body(tx: Connection) -> None:
                row = await tx.fetchone("SELECT generation FROM fleet_state WHERE id = 1")
                assert row is not None
                if name not in first_attempts:  # only the first attempts meet
                    first_attempts.add(name)
                    await asyncio.wait_for(barrier.wait(), 10)
                await tx.execute(
                    "UPDATE fleet_state SET generation = ? WHERE id = 1", (row["generation"] + 1,)
                )

            return body

        first: set[str] = set()
        await asyncio.gather(a._write(bump(first, "a")), b._write(bump(first, "b")))  # type: ignore[arg-type]
        assert await a.generation() == start + 2
        assert a.serialization_retries + b.serialization_retries >= 1
        assert len(calls) == b.serialization_retries


@pytestmark_pg
async def test_concurrent_writes_of_two_replicas_lose_nothing(
    replica_url: Callable[..., str],
) -> None:
    async with opened(replica_url(pool_max="8")) as a, opened(replica_url(pool_max="8")) as b:
        await a.migrate()
        stores = (a, b)
        start = await a.generation()
        token = await enrollment(a, max_uses=5)
        node = await add_node(a, token)

        published = await asyncio.gather(
            *(add_function(stores[i % 2], function(f"fn{i}")) for i in range(16)),
            return_exceptions=True,
        )
        appended = await asyncio.gather(
            *(stores[i % 2].add_migration(migration(1)) for i in range(6)),
            return_exceptions=True,
        )
        registered = await asyncio.gather(
            *(add_node(stores[i % 2], token) for i in range(8)), return_exceptions=True
        )
        beats = await asyncio.gather(
            *(stores[i % 2].heartbeat(node.id, utcnow(), f"v{i}", None) for i in range(12)),
            return_exceptions=True,
        )

        # Every write either committed or failed cleanly (503, retry later)...
        for result in published + beats:
            assert result is None or isinstance(result, ServiceUnavailable), result
        assert all(r is None or isinstance(r, SchemaVersionConflict) for r in appended), appended
        # ...and nothing committed was lost: one generation per publish and migration.
        bumps = sum(r is None for r in published) + sum(r is None for r in appended)
        assert sum(r is None for r in appended) == 1
        assert await a.generation() == await b.generation() == start + bumps
        assert len((await b.target()).functions) == sum(r is None for r in published)
        # The enrollment token's four remaining uses went to four of the eight.
        assert sum(not isinstance(r, BaseException) for r in registered) == 4
        nodes, _ = await b.list_nodes(now=utcnow())
        assert len(nodes) == 5
        # The conflicts really happened, and the write loop retried them.
        assert a.serialization_retries + b.serialization_retries > 0


@pytestmark_pg
async def test_a_column_another_replica_adds_does_not_break_running_reads(
    postgres: PostgresSandbox, replica_url: Callable[..., str]
) -> None:
    """A rolling upgrade: a new replica's migration adds a column while old ones
    keep running ``SELECT *``. With server-side prepared statements, PostgreSQL
    would refuse those on every old connection ("cached plan must not change
    result type") until it was recycled."""
    url = replica_url(pool_min="1", pool_max="1")  # one connection: it sees every query
    async with opened(url) as store:
        await store.migrate()
        await add_function(store, function())
        for _ in range(10):
            assert len((await store.list_functions())[0]) == 1
        schema = parse_qs(urlsplit(url).query)["options"][0].split("=", 1)[1]
        postgres.execute(f'ALTER TABLE "{schema}".functions ADD COLUMN later TEXT')
        for _ in range(3):
            assert len((await store.list_functions())[0]) == 1


async def _wait_until_gone(postgres: PostgresSandbox, application: str) -> None:
    for _ in range(100):
        with psycopg.connect(postgres.url, autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application,),
            ).fetchone()
        if row is not None and row[0] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the terminated backends did not go away")


@pytestmark_pg
async def test_connections_the_server_killed_are_replaced_transparently(
    postgres: PostgresSandbox, replica_url: Callable[..., str]
) -> None:
    """What a database restart does to idle pooled connections, without a restart."""
    application = f"edgesync-test-{uuid.uuid4().hex[:8]}"
    async with opened(replica_url(application_name=application, pool_min="3")) as store:
        await store.migrate()
        token = await enrollment(store)
        node = await add_node(store, token)
        for write_first in (True, False):
            with psycopg.connect(postgres.url, autocommit=True) as connection:
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (application,),
                )
            await _wait_until_gone(postgres, application)
            if write_first:
                await store.heartbeat(node.id, utcnow(), "after-kill", None)
            assert (await store.get_node(node.id)).id == node.id
            await store.db.ping()
        assert (await store.get_node(node.id)).agent_version == "after-kill"


class TcpProxy:
    """A loopback TCP relay to PostgreSQL that can be cut and restored (an outage)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()


def _postgres_address(postgres: PostgresSandbox) -> tuple[str, int]:
    parts = urlsplit(postgres.url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@pytestmark_pg
async def test_an_outage_is_503_quickly_and_the_pool_recovers(
    postgres: PostgresSandbox, replica_url: Callable[..., str]
) -> None:
    proxy = TcpProxy(_postgres_address(postgres))
    await proxy.start()
    url = _via(
        replica_url(pool_min="2", pool_timeout="0.5", pool_reconnect_timeout="2"), proxy.port
    )
    assert f":{proxy.port}/" in url
    try:
        async with opened(url) as store:
            await store.migrate()
            token = await enrollment(store)
            node = await add_node(store, token)

            await proxy.stop()
            # Down: every call ends in DatabaseUnavailable (503, retryable), none hangs.
            for call in (
                store.db.ping,
                lambda: store.get_node(node.id),
                lambda: store.heartbeat(node.id, utcnow(), None, None),
                lambda: add_function(store, function()),
            ):
                with pytest.raises(DatabaseUnavailable):
                    await asyncio.wait_for(call(), 30)

            await proxy.start()  # the same port: the database is back
            for _ in range(300):
                try:
                    await asyncio.wait_for(store.db.ping(), 30)
                    break
                except DatabaseUnavailable:
                    await asyncio.sleep(0.1)
            await store.heartbeat(node.id, utcnow(), "back", None)
            assert (await store.get_node(node.id)).agent_version == "back"
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


async def test_an_unreachable_database_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(DatabaseUnavailable) as caught:
            url = f"postgresql://edgesync:secret@127.0.0.1:{port}/x?pool_timeout=1"
            await asyncio.wait_for(open_database(url), 30)
    assert "secret" not in str(caught.value)
