"""Fixtures shared by the unit and API suites: WASM modules and the metadata store.

The store is exercised through the ``database_url`` fixture, parametrized by
database kind. Today only SQLite runs; the PostgreSQL/CockroachDB backend is a
one-line addition to ``DATABASE_KINDS`` (its URL comes from the environment).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.store.db import open_database
from appliance.store.store import Store

# Add "postgresql" here once appliance.store.postgres exists; its tests then run
# against $EDGESYNC_TEST_POSTGRES_URL, which must name an empty database for
# each test (the store tests assume they start from nothing).
DATABASE_KINDS = ["sqlite"]


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


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming an empty metadata database, one per test."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    url = os.environ.get("EDGESYNC_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(f"set EDGESYNC_TEST_POSTGRES_URL to run the {request.param} store tests")
    return url


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
