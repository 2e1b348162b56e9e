"""The control plane on an S3 artifact store: uploads, plans, downloads, deletes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import pytest
from api_support import ADMIN, Api, ApiFactory, expect_error
from yarl import URL

from appliance.artifacts import ArtifactStoreUnavailable
from appliance.artifacts.s3 import PART_SIZE

from .support import SECRET_KEY, S3Server

BUCKET = "wasm-functions"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(s3: S3Server, key: str) -> bytes:
    response = s3.client().get_object(BUCKET, key)
    try:
        data: bytes = response.read()
        return data
    finally:
        response.close()
        response.release_conn()


async def plain_get(url: str) -> tuple[int, bytes]:
    """A GET with no credentials at all, as an agent fetches a plan's URL."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def metric(api: Api, name: str) -> float:
    text = await (await api.get("/metrics")).text()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_upload_lands_under_the_seed_layout(make_s3_api: ApiFactory, s3, wasm) -> None:
    api = await make_s3_api()
    module = wasm.module(1)
    created = await api.upload_ok("hello", "1.2.0", module)
    assert created["sha256"] == sha256(module)
    assert stored(s3, "hello/1.2.0/function.wasm") == module
    stat = s3.client().stat_object(BUCKET, "hello/1.2.0/function.wasm")
    assert stat.content_type == "application/wasm"
    # Nothing is left in the staging folder.
    assert [p for p in (api.config.data_dir / "staging").rglob("*") if p.is_file()] == []


async def test_large_upload_is_multipart_and_intact(make_s3_api: ApiFactory, s3, wasm) -> None:
    api = await make_s3_api()
    module = wasm.big(40 * 1024 * 1024, tag=3)
    created = await api.upload_ok("big", "1.0", module)
    assert created["size_bytes"] == len(module)
    stat = s3.client().stat_object(BUCKET, "big/1.0/function.wasm")
    parts = -(-len(module) // PART_SIZE)
    assert parts > 1
    assert re.fullmatch(rf'"?[0-9a-f]{{32}}-{parts}"?', stat.etag), stat.etag
    assert sha256(stored(s3, "big/1.0/function.wasm")) == sha256(module)


async def test_direct_plans_carry_presigned_urls(make_s3_api: ApiFactory, s3, wasm) -> None:
    api = await make_s3_api(artifact_delivery="direct")
    module = wasm.module(2)
    created = await api.upload_ok("hello", "1.0", module)
    node = await api.register()
    plan = await api.plan(node)
    (deploy,) = [a for a in plan["actions"] if a["type"] == "deploy_function"]
    assert deploy["function_id"] == created["id"]
    url = URL(deploy["download_url"])
    assert f"{url.host}:{url.port}" == s3.endpoint
    assert url.path == f"/{BUCKET}/hello/1.0/function.wasm"
    assert url.query["X-Amz-Expires"] == str(api.config.url_ttl_seconds)
    assert SECRET_KEY not in str(url)
    status, body = await plain_get(str(url))
    assert status == 200 and body == module and sha256(body) == deploy["sha256"]
    # SeaweedFS checks the signature: the same URL with its signature altered,
    # or naming another object, is refused.
    signature = url.query["X-Amz-Signature"]
    forged = url.update_query({"X-Amz-Signature": signature[::-1]})
    assert (await plain_get(str(forged)))[0] == 403
    other = url.with_path(f"/{BUCKET}/hello/9.9/function.wasm").with_query(url.query)
    assert (await plain_get(str(other)))[0] == 403


async def test_proxy_plans_point_at_the_control_plane(make_s3_api: ApiFactory, wasm) -> None:
    api = await make_s3_api(artifact_delivery="proxy")
    module = wasm.big(3 * 1024 * 1024 + 17, tag=4)  # several read chunks
    created = await api.upload_ok("hello", "1.0", module)
    node = await api.register()
    plan = await api.plan(node)
    (deploy,) = [a for a in plan["actions"] if a["type"] == "deploy_function"]
    url = URL(deploy["download_url"])
    assert url.path == f"/api/v1/functions/{created['id']}/download"
    assert {"expires", "sig"} <= set(url.query)
    before = await metric(api, "edgesync_artifact_download_bytes_total")

    response = await api.get(url.path_qs)  # the signed URL alone: no bearer token
    assert response.status == 200
    assert response.content_type == "application/wasm"
    assert response.headers["Content-Length"] == str(len(module))
    assert response.headers["X-Content-SHA256"] == sha256(module)
    assert await response.read() == module

    after = await metric(api, "edgesync_artifact_download_bytes_total")
    assert after - before == len(module)
    assert await metric(api, "edgesync_artifact_download_seconds_count") >= 1


async def test_delete_removes_the_object(make_s3_api: ApiFactory, s3, wasm) -> None:
    api = await make_s3_api()
    created = await api.upload_ok("hello", "1.0", wasm.module(5))
    key = "hello/1.0/function.wasm"
    assert stored(s3, key)
    response = await api.delete(f"/api/v1/functions/{created['id']}", headers=ADMIN)
    assert response.status == 204
    names = [o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)]
    assert key not in names
    gone = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    await expect_error(gone, 404, "NOT_FOUND")


async def test_missing_object_downloads_as_404(make_s3_api: ApiFactory, s3, wasm) -> None:
    api = await make_s3_api(artifact_delivery="proxy")
    created = await api.upload_ok("hello", "1.0", wasm.module(6))
    s3.client().remove_object(BUCKET, "hello/1.0/function.wasm")  # behind the app's back
    response = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    await expect_error(response, 404, "NOT_FOUND")


async def test_concurrent_uploads_have_one_winner(make_s3_api: ApiFactory, s3, wasm) -> None:
    api = await make_s3_api()
    modules = [wasm.big(6 * 1024 * 1024, tag=200 + i) for i in range(5)]
    assert len({sha256(m) for m in modules}) == 5
    responses = await asyncio.gather(*(api.upload("race", "1.0", m) for m in modules))
    assert sorted(r.status for r in responses) == [201, 409, 409, 409, 409]
    winner: dict[str, Any] = json.loads(await next(r for r in responses if r.status == 201).text())
    for response in responses:
        if response.status == 409:
            await expect_error(response, 409, "FUNCTION_EXISTS")
    assert sha256(stored(s3, "race/1.0/function.wasm")) == winner["sha256"]
    listed = await api.json("GET", "/api/v1/functions?name=race", headers=ADMIN)
    assert [f["id"] for f in listed["functions"]] == [winner["id"]]


async def test_readyz_reports_the_artifact_store(make_s3_api: ApiFactory) -> None:
    api = await make_s3_api()
    body = await api.json("GET", "/readyz")
    assert body == {"status": "ready", "checks": {"database": "ok", "artifacts": "ok"}}


async def test_store_failing_mid_download_cuts_the_connection(
    make_s3_api: ApiFactory, wasm, caplog: pytest.LogCaptureFixture
) -> None:
    api = await make_s3_api(artifact_delivery="proxy")
    module = wasm.big(2 * 1024 * 1024, tag=7)
    created = await api.upload_ok("hello", "1.0", module)
    store = api.services.artifacts
    real_read = store.read

    async def failing_read(key: str, chunk_size: int = 256 * 1024) -> AsyncGenerator[bytes, None]:
        sent = 0
        async for chunk in real_read(key, chunk_size):
            yield chunk
            sent += 1
            if sent == 2:
                raise ArtifactStoreUnavailable("connection reset by the store")

    store.read = failing_read  # type: ignore[method-assign]
    response = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    assert response.status == 200  # the headers went out before the failure
    # The client learns at once (not after its timeout): fewer bytes than promised.
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(response.read(), 10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    store.read = real_read  # type: ignore[method-assign]
    again = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    assert again.status == 200 and await again.read() == module
