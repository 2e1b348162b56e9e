"""An S3 outage and its recovery, with the control plane running throughout.

The test's own SeaweedFS server is stopped (connections refused, as when MinIO
is down) and started again on the same ports, with its data; or as a new, empty
server (``wipe``), whose missing bucket the store must create again without
the app being restarted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest
from aiohttp import web
from api_support import ADMIN, ApiFactory, expect_error

from appliance.app import make_app
from appliance.config import ServeConfig

from .support import SECRET_KEY, S3Server, free_port


async def test_outage_gives_503_and_recovery_needs_no_restart(
    make_s3_api: ApiFactory, own_s3: S3Server, wasm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await make_s3_api(artifact_url=own_s3.url(), artifact_delivery="proxy")
    stored = await api.upload_ok("hello", "1.0", wasm.module(1))
    doomed = await api.upload_ok("doomed", "1.0", wasm.module(9))
    assert (await api.get("/readyz")).status == 200

    own_s3.stop()
    loop = asyncio.get_running_loop()

    started = loop.time()
    ready = await api.get("/readyz")
    error = await expect_error(ready, 503, "SERVICE_UNAVAILABLE")
    assert error["details"]["checks"]["database"] == "ok"
    assert error["details"]["checks"]["artifacts"].startswith("unavailable")
    assert ready.headers["Retry-After"].isdigit()

    upload = await api.upload("hello", "2.0", wasm.module(2))
    error = await expect_error(upload, 503, "SERVICE_UNAVAILABLE")
    assert error["retryable"] is True
    assert upload.headers["Retry-After"].isdigit()
    assert "artifact store" in error["message"]
    assert loop.time() - started < 15  # fails fast (a bound on waiting, not a speed claim)
    # Nothing half-written: the claim on (hello, 2.0) was released.
    assert not await api.services.store.function_exists("hello", "2.0")
    listed = await api.json("GET", "/api/v1/functions?name=hello", headers=ADMIN)
    assert [f["version"] for f in listed["functions"]] == ["1.0"]

    download = await api.get(f"/api/v1/functions/{stored['id']}/download", headers=ADMIN)
    await expect_error(download, 503, "SERVICE_UNAVAILABLE")

    # A delete still withdraws the version; only its bytes stay behind (logged).
    deleted = await api.delete(f"/api/v1/functions/{doomed['id']}", headers=ADMIN)
    assert deleted.status == 204
    listed = await api.json("GET", "/api/v1/functions?name=doomed", headers=ADMIN)
    assert listed["functions"] == []

    # Back on the same ports with its data: what was stored before downloads,
    # and the next upload works with no restart of the app.
    own_s3.start()
    download = await api.get(f"/api/v1/functions/{stored['id']}/download", headers=ADMIN)
    assert download.status == 200 and await download.read() == wasm.module(1)
    module = wasm.module(3)
    again = await api.upload_ok("hello", "2.0", module)
    assert again["sha256"] == hashlib.sha256(module).hexdigest()
    download = await api.get(f"/api/v1/functions/{again['id']}/download", headers=ADMIN)
    assert download.status == 200 and await download.read() == module
    assert (await api.get("/readyz")).status == 200

    # No log line of the whole episode carried the secret key.
    assert all(SECRET_KEY not in record.getMessage() for record in caplog.records)
    assert any("artifact store" in record.getMessage() for record in caplog.records)


async def test_an_upload_recreates_the_bucket_of_an_emptied_server(
    make_s3_api: ApiFactory, own_s3: S3Server, wasm
) -> None:
    api = await make_s3_api(artifact_url=own_s3.url())
    own_s3.stop()
    own_s3.start(wipe=True)
    module = wasm.module(4)
    created = await api.upload_ok("hello", "1.0", module)
    assert created["sha256"] == hashlib.sha256(module).hexdigest()
    assert own_s3.client().bucket_exists("wasm-functions")


async def test_readyz_recreates_a_vanished_bucket(
    make_s3_api: ApiFactory, own_s3: S3Server
) -> None:
    api = await make_s3_api(artifact_url=own_s3.url())
    own_s3.stop()
    own_s3.start(wipe=True)  # a new, empty server on the same address
    assert not own_s3.client().bucket_exists("wasm-functions")
    body = await api.json("GET", "/readyz")
    assert body["checks"]["artifacts"] == "ok"
    assert own_s3.client().bucket_exists("wasm-functions")


async def test_serve_refuses_to_start_without_its_store(tmp_path: Path) -> None:
    url = f"http://ak:{SECRET_KEY}@127.0.0.1:{free_port()}/"
    config = ServeConfig(data_dir=tmp_path, artifact_url=url, admin_token="x" * 16)
    runner = web.AppRunner(make_app(config))
    try:
        with pytest.raises(RuntimeError) as caught:
            await runner.setup()
    finally:
        await runner.cleanup()
    assert "cannot use the artifact store" in str(caught.value)
    assert SECRET_KEY not in str(caught.value)
