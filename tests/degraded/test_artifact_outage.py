"""The S3 artifact store goes away (the test's SeaweedFS server is stopped) and comes
back on the same ports with its data, while the control plane (on the private
PostgreSQL, the production layout) keeps running.

Uploads and proxied downloads answer 503 (retryable, ``Retry-After``); a
refused upload leaves no row behind; what needs only the database (plans,
listings) keeps working; afterwards the same app serves everything again
(``tests/s3/test_s3_outage.py`` covers a server that comes back empty).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import urlsplit

from degraded_support import (
    ADMIN,
    AppFactory,
    PgDatabase,
    expect_unavailable,
    readiness,
    wait_ready,
    within,
)
from s3.support import S3Server


async def test_artifact_store_outage_is_503_and_heals_without_restart(
    make_replica: AppFactory, pg: PgDatabase, own_s3: S3Server, wasm: Any
) -> None:
    api = await make_replica(artifact_url=own_s3.url(), artifact_delivery="proxy")
    stored = await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register("edge-1")
    assert await readiness(api) == (200, {"database": "ok", "artifacts": "ok"})

    await asyncio.to_thread(own_s3.stop)

    status, checks = await readiness(api)
    assert status == 503
    assert checks["artifacts"].startswith("unavailable"), checks
    assert checks["database"] == "ok"

    module = wasm.module(2)
    upload = await within(api.upload("hello", "2.0", module))
    error = await expect_unavailable(upload)
    assert "artifact store" in error["message"]
    # The claim on (hello, 2.0) was released: no row, visible or not.
    assert await pg.rows("SELECT status FROM functions WHERE version = '2.0'") == []
    assert [p for p in (api.config.data_dir / "staging").rglob("*") if p.is_file()] == []

    download = await within(api.get(f"/api/v1/functions/{stored['id']}/download", headers=ADMIN))
    await expect_unavailable(download)
    # A node's signed URL (the plan's, in proxy mode) meets the same answer.
    plan = await api.plan(node)  # plans need only the database: still served
    [deploy] = [a for a in plan["actions"] if a["type"] == "deploy_function"]
    url = urlsplit(deploy["download_url"])
    signed = await within(api.get(f"{url.path}?{url.query}"))
    await expect_unavailable(signed)
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert [f["version"] for f in listed["functions"]] == ["1.0"]

    await asyncio.to_thread(own_s3.start)  # same ports, with its data
    assert await wait_ready(api) == {"database": "ok", "artifacts": "ok"}

    download = await within(api.get(f"/api/v1/functions/{stored['id']}/download", headers=ADMIN))
    assert download.status == 200 and await download.read() == wasm.module(1)
    created = await api.upload_ok("hello", "2.0", module)
    assert created["sha256"] == hashlib.sha256(module).hexdigest()
    download = await within(api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN))
    assert download.status == 200 and await download.read() == module
    listed = await api.json("GET", "/api/v1/functions?name=hello", headers=ADMIN)
    assert [f["version"] for f in listed["functions"]] == ["1.0", "2.0"]
    assert (await api.plan(node))["target"]["functions"][0]["version"] == "2.0"


async def test_both_dependencies_down_then_back_in_either_order(
    make_replica: AppFactory, pg: PgDatabase, own_s3: S3Server, wasm: Any
) -> None:
    api = await make_replica(artifact_url=own_s3.url())
    await asyncio.gather(asyncio.to_thread(own_s3.stop), asyncio.to_thread(pg.server.stop, "fast"))
    status, checks = await readiness(api)
    assert status == 503
    assert all(value.startswith("unavailable") for value in checks.values()), checks
    await expect_unavailable(await within(api.upload("hello", "1.0", wasm.module(1))))

    await asyncio.to_thread(pg.server.start)
    status, checks = await readiness(api)
    assert status == 503 and checks["artifacts"].startswith("unavailable"), checks
    # The database is back, the store is not: the upload is refused and its claim released.
    await expect_unavailable(await within(api.upload("hello", "1.0", wasm.module(1))))
    await wait_until_database_answers(api)
    await expect_unavailable(await within(api.upload("hello", "1.0", wasm.module(1))))
    assert await pg.rows("SELECT id FROM functions") == []

    await asyncio.to_thread(own_s3.start)
    await wait_ready(api)
    await api.upload_ok("hello", "1.0", wasm.module(1))


async def wait_until_database_answers(api: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (await readiness(api))[1]["database"] != "ok":
        assert loop.time() < deadline, "the database did not come back"
        await asyncio.sleep(0.2)
