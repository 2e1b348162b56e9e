"""PostgreSQL for the test suites: one database per session, one schema per test.

The session creates ``edgesync_test_<hex>`` through the admin URL
(``$EDGESYNC_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``)
and drops it at the end. Each :meth:`PostgresSandbox.new_url` makes an empty
schema in it and returns a URL whose connections see only that schema
(``options=-csearch_path=...``): a fresh, isolated database for one store, at
the cost of one ``CREATE SCHEMA`` (a fresh database per test costs ~10× more).
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

ADMIN_URL_ENV = "EDGESYNC_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Small pools: many apps open and close one per test; a few connections still
# let concurrent writes really overlap.
TEST_POOL = {"pool_min": "1", "pool_max": "4", "pool_timeout": "10"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL


def with_database(url: str, database: str, **params: str) -> str:
    """``url`` naming another database, with query parameters added or replaced."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(path=f"/{database}", query=urlencode(query)))


class PostgresSandbox:
    """A database made for one test session; hands out one fresh schema per call."""

    def __init__(self, admin: str, database: str, connection: psycopg.Connection) -> None:
        self.admin = admin
        self.database = database
        self.url = with_database(admin, database)
        self._connection = connection

    @classmethod
    def create(cls, admin: str) -> PostgresSandbox:
        """Create the session's database; raises ``psycopg.OperationalError`` if unreachable."""
        database = f"edgesync_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        connection = psycopg.connect(
            with_database(admin, database), autocommit=True, connect_timeout=5
        )
        return cls(admin, database, connection)

    def new_schema(self) -> str:
        schema = f"t_{uuid.uuid4().hex[:16]}"
        self._connection.execute(f'CREATE SCHEMA "{schema}"')
        return schema

    def url_for(self, schema: str, **params: str) -> str:
        """A URL whose connections see ``schema`` (and nothing else of this database)."""
        options = {"options": f"-csearch_path={schema}", **TEST_POOL, **params}
        return with_database(self.admin, self.database, **options)

    def new_url(self, **params: str) -> str:
        """A URL naming a new, empty database of its own (a schema)."""
        return self.url_for(self.new_schema(), **params)

    def execute(self, sql: str) -> None:
        """Run ``sql`` on the session's database (as the admin user)."""
        self._connection.execute(sql)  # type: ignore[arg-type]

    def drop(self) -> None:
        self._connection.close()
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as connection:
            try:
                # FORCE: servers a failed test left running must not keep it alive.
                connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            except psycopg.errors.SyntaxError:  # CockroachDB has no FORCE; CASCADE instead
                connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" CASCADE')
