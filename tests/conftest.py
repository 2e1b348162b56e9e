"""Fixtures shared by the unit, API and end-to-end suites: WASM modules and the
metadata store.

Everything that touches the metadata store is parametrized by database kind
(``database_kind``: every kind in ``DATABASE_KINDS`` unless the test is marked
``@pytest.mark.databases("sqlite")``). PostgreSQL runs against
``$EDGESYNC_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``):
one database per session, a fresh schema per store (``postgres_support.py``).
When it is unreachable its tests skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from postgres_support import ADMIN_URL_ENV, PostgresSandbox, admin_url, in_ci

from appliance.store.db import open_database
from appliance.store.store import Store

DATABASE_KINDS = ["sqlite", "postgresql"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "databases(*kinds): run only against these database kinds (default: all)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("databases")
        kinds = list(marker.args) if marker else DATABASE_KINDS
        metafunc.parametrize("database_kind", kinds, scope="function")


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class WasmFactory:
    """Small, distinct, valid WebAssembly modules (and broken ones)."""

    @staticmethod
    def module(tag: int = 0) -> bytes:
        """A valid WASI-style command module; ``tag`` makes the bytes distinct."""
        import wasmtime

        wat = (
            f'(module (func (export "_start")) (global (export "tag") i32 (i32.const {int(tag)})))'
        )
        return bytes(wasmtime.wat2wasm(wat))

    @classmethod
    def big(cls, size: int, tag: int = 0) -> bytes:
        """A valid module of at least ``size`` bytes: a custom section of filler."""
        base = cls.module(tag)
        name = b"filler"
        payload = bytes(range(256)) * (max(0, size - len(base)) // 256 + 1)
        contents = _leb128(len(name)) + name + payload
        return base + b"\x00" + _leb128(len(contents)) + contents

    @staticmethod
    def invalid(size: int = 64) -> bytes:
        """The right magic and version, then a section that does not parse."""
        return b"\x00asm\x01\x00\x00\x00" + b"\x7f" * size

    @staticmethod
    def not_wasm() -> bytes:
        return b"#!/bin/sh\necho this is not webassembly\n"


@pytest.fixture(scope="session")
def wasm() -> type[WasmFactory]:
    return WasmFactory


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresSandbox]:
    """This session's PostgreSQL database (created here, dropped at the end)."""
    try:
        sandbox = PostgresSandbox.create(admin_url())
    except psycopg.Error as exc:
        problem = f"PostgreSQL at ${ADMIN_URL_ENV} (or the default) is unusable: {exc}"
        if in_ci():
            pytest.fail(problem)
        pytest.skip(problem)
    try:
        yield sandbox
    finally:
        sandbox.drop()


@pytest.fixture
def make_database_url(
    database_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], str]:
    """A factory of URLs, each naming a new, empty metadata database of this test's kind."""
    if database_kind == "sqlite":
        count = itertools.count()
        return lambda: f"sqlite://{tmp_path / f'store-{next(count)}.db'}"
    sandbox: PostgresSandbox = request.getfixturevalue("postgres")
    return sandbox.new_url


@pytest.fixture
def database_url(make_database_url: Callable[[], str]) -> str:
    """A URL naming an empty metadata database, one per test."""
    return make_database_url()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated :class:`Store` over ``database_url``."""
    database = await open_database(database_url)
    try:
        instance = Store(database)
        await instance.migrate()
        yield instance
    finally:
        await database.close()
