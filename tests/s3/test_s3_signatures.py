"""Direct-delivery URLs are really signed: SeaweedFS checks SigV4, so a presigned
URL that was tampered with, has expired, or was signed with the wrong secret
is refused (403). moto's server would accept all three: no test of signing."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import minio.time
import pytest

from appliance.artifacts.location import S3Location
from appliance.artifacts.s3 import S3ArtifactStore

from .support import ACCESS_KEY, S3Server

KEY = "hello/1.0.0/function.wasm"
OTHER = "other/1.0.0/function.wasm"


def status_of(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
async def store(s3: S3Server, tmp_path: Path) -> AsyncIterator[S3ArtifactStore]:
    """A store holding ``KEY`` and ``OTHER``, each with its own bytes."""
    opened = await S3ArtifactStore.open(s3.url())
    for key in (KEY, OTHER):
        source = tmp_path / key.replace("/", "_")
        source.write_bytes(os.urandom(1000))
        await opened.put(key, source)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_genuine_presigned_url_downloads(store: S3ArtifactStore) -> None:
    url = store.presigned_url(KEY, 900)
    assert url is not None
    status, body = await asyncio.to_thread(status_of, url)
    assert status == 200 and len(body) == 1000


async def test_a_tampered_signature_is_refused(store: S3ArtifactStore) -> None:
    url = store.presigned_url(KEY, 900)
    assert url is not None
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    status, body = await asyncio.to_thread(
        status_of, with_query(url, **{"X-Amz-Signature": flipped})
    )
    assert status == 403, body
    assert b"SignatureDoesNotMatch" in body or b"AccessDenied" in body


async def test_a_signature_does_not_open_another_object(store: S3ArtifactStore) -> None:
    url = store.presigned_url(KEY, 900)
    assert url is not None
    moved = url.replace(KEY, OTHER)
    assert moved != url
    status, _ = await asyncio.to_thread(status_of, moved)
    assert status == 403


async def test_a_longer_expiry_than_signed_is_refused(store: S3ArtifactStore) -> None:
    url = store.presigned_url(KEY, 60)
    assert url is not None
    status, _ = await asyncio.to_thread(status_of, with_query(url, **{"X-Amz-Expires": "604800"}))
    assert status == 403


async def test_an_expired_url_is_refused(
    store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed an hour ago for 60 seconds (the signer's clock moved back, not ours)."""
    real = minio.time.utcnow
    monkeypatch.setattr(minio.time, "utcnow", lambda: real() - timedelta(hours=1))
    url = store.presigned_url(KEY, 60)
    monkeypatch.undo()
    assert url is not None
    status, body = await asyncio.to_thread(status_of, url)
    assert status == 403, body


async def test_a_url_signed_with_the_wrong_secret_is_refused(
    s3: S3Server, store: S3ArtifactStore
) -> None:
    impostor = S3ArtifactStore(
        S3Location.parse(f"http://{ACCESS_KEY}:not-the-secret@{s3.endpoint}/")
    )
    try:
        url = impostor.presigned_url(KEY, 900)
        assert url is not None
        status, _ = await asyncio.to_thread(status_of, url)
        assert status == 403
    finally:
        await impostor.close()
