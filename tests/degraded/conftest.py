"""Fixtures of the degraded-dependency tests: a PostgreSQL server and an S3
server that each test may stop and start, and in-process apps over them.

``private_postgres`` is one cluster for the session (``initdb`` costs about a
second); every test gets a database of its own on it (``pg``) and finds the
server running, whatever the previous test left. ``own_s3`` is an S3 server
(SeaweedFS, ``tests/s3/support.py``) for one test. Without PostgreSQL binaries
or SeaweedFS the tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from degraded_support import (
    AppFactory,
    PgDatabase,
    PostgresUnavailable,
    PrivatePostgres,
    in_ci,
)
from s3.support import S3Server

from api_support import api_factory  # on sys.path through degraded_support  # isort: skip


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        server = PrivatePostgres.create()
    except PostgresUnavailable as exc:
        reason = f"cannot run a private PostgreSQL: {exc}"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the degraded-dependency tests may not be skipped)")
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg(private_postgres: PrivatePostgres) -> Iterator[PgDatabase]:
    """An empty database on the running private server (restarted if a test left it down)."""
    private_postgres.ensure_running()
    database = PgDatabase(private_postgres, private_postgres.create_database())
    try:
        yield database
    finally:
        private_postgres.ensure_running()
        private_postgres.drop_database(database.name)


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server for this test alone: it may be stopped and started again."""
    server = S3Server.launch(tmp_path / "seaweedfs")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_replica(pg: PgDatabase, aiohttp_client: Any, tmp_path: Path) -> AppFactory:
    """In-process apps on ``pg`` (``ServeConfig`` overrides); each has its own data dir.

    Two of them on one database are two replicas of one deployment. (``pg``
    comes first: its database is dropped only after the apps are closed.)
    """
    return api_factory(aiohttp_client, tmp_path, "replica", database_url=pg.url())
