"""An upload cut by a database outage between its claim and its publication does not
block its version: the retry succeeds as soon as the database is back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from degraded_support import (
    ADMIN,
    AppFactory,
    PgDatabase,
    expect_unavailable,
    wait_ready,
    within,
)


async def test_an_upload_cut_by_a_database_outage_is_retried_at_once(
    make_replica: AppFactory, pg: PgDatabase, wasm: Any, monkeypatch: Any
) -> None:
    api = await make_replica()
    store_put = api.services.artifacts.put

    async def put_then_outage(key: str, path: Path) -> None:
        await store_put(key, path)
        await asyncio.to_thread(pg.server.stop, "fast")  # claimed and stored, not published

    monkeypatch.setattr(api.services.artifacts, "put", put_then_outage)
    await expect_unavailable(await within(api.upload("hello", "1.0", wasm.module(1))))
    monkeypatch.undo()
    await asyncio.to_thread(pg.server.start)
    await wait_ready(api)
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert listed["functions"] == []  # never published ...
    created = await api.upload_ok("hello", "1.0", wasm.module(1))  # ... and not blocked
    assert created["version"] == "1.0"
    staging = api.config.data_dir / "staging"
    assert [p for p in staging.rglob("*") if p.is_file()] == []
