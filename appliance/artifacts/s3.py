"""The artifact store on MinIO or any S3 endpoint, through the minio SDK.

Objects live under the seed's layout, ``{name}/{version}/function.wasm`` in the
bucket (``wasm-functions`` unless the URL names another); see
:mod:`appliance.artifacts.location` for the URL form.

The SDK is synchronous: every call that may touch the network runs in a worker
thread (``asyncio.to_thread``), so the event loop never waits on S3. Presigning
is pure computation (the region is always configured, so the SDK never looks
it up) and runs inline.

Failures to reach the store (refused or timed-out connections, 5xx answers,
refused credentials) become :class:`ArtifactStoreUnavailable`, which the API
renders as a retryable 503. The client fails fast: short connect timeouts and
a single retry, so an outage costs a request a few seconds at most.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from appliance.artifacts.base import ArtifactMissing, ArtifactStoreUnavailable
from appliance.artifacts.location import Endpoint, S3Location

log = logging.getLogger("edgesync.artifacts")

T = TypeVar("T")

# Multipart part size: modules above it go up as a multipart upload, read from
# the staging file one part at a time. S3's minimum (5 MiB) on purpose: the minio
# SDK holds about two parts in memory while uploading (bench/s3_transfer.py saw
# +33 MiB of server RSS with 16 MiB parts).
PART_SIZE = 5 * 1024 * 1024
CONNECT_TIMEOUT = 3.0
# Waiting for an answer: a part upload or CompleteMultipartUpload may take a while.
READ_TIMEOUT = 60.0
# /readyz must answer quickly, whatever the store does.
PROBE_TIMEOUT = 3.0
CONTENT_TYPE = "application/wasm"

# Errors that mean "could not talk to the store" (not "the store said no").
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,  # MaxRetryError, timeouts, protocol errors
    ConnectionError,
    TimeoutError,
    ServerError,  # a 5xx answer without an S3 error document
    InvalidResponseError,  # a non-S3 answer (a proxy's error page)
    MinioException,
)
_BUCKET_RACE = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


def _http_client(*, read_timeout: float, retries: int) -> urllib3.PoolManager:
    """The SDK's urllib3 pool with timeouts and retries that fail fast."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, read_timeout), read=read_timeout),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
        ),
    )


def _client(location: S3Location, endpoint: Endpoint, http: urllib3.PoolManager) -> Minio:
    return Minio(
        endpoint.hostport,
        access_key=location.access_key,
        secret_key=location.secret_key,
        secure=endpoint.secure,
        region=location.region,  # set: the SDK never fetches the bucket's region
        http_client=http,
    )


class S3ArtifactStore:
    """:class:`~appliance.artifacts.base.ArtifactStore` on an S3 bucket."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.bucket = location.bucket
        self._http = _http_client(read_timeout=READ_TIMEOUT, retries=1)
        self._probe_http = _http_client(read_timeout=PROBE_TIMEOUT, retries=0)
        self._client = _client(location, location.endpoint, self._http)
        self._probe = _client(location, location.endpoint, self._probe_http)
        # Presigned URLs name the host nodes will fetch from; its signature
        # covers that host, so a separate public endpoint needs its own client.
        self._presigner = (
            _client(location, location.public_endpoint, self._http)
            if location.public_endpoint is not None
            else self._client
        )
        self._bucket_ready = False

    @classmethod
    async def open(cls, url: str) -> S3ArtifactStore:
        """Connect, and create the bucket when it is missing.

        Raises :class:`ArtifactStoreUnavailable` when the store cannot be
        reached, so ``serve`` refuses to start on a wrong endpoint or keys.
        """
        store = cls(S3Location.parse(url))
        try:
            await store._ensure_bucket(store._client)
        except ArtifactStoreUnavailable as exc:
            await store.close()
            raise ArtifactStoreUnavailable(
                f"cannot use the artifact store {store.location.display}: {exc}"
            ) from None
        log.info("artifact store: %s", store.location.display)
        return store

    # -- the ArtifactStore interface ------------------------------------------------

    async def put(self, key: str, source: Path) -> None:
        """Upload ``source`` (multipart above :data:`PART_SIZE`), replacing any object.

        S3 makes an object visible only once its upload completes, so a failed
        upload leaves nothing under ``key`` (the SDK aborts the multipart upload;
        if the store is gone meanwhile, its parts linger until a lifecycle rule
        removes them).
        """
        if not self._bucket_ready:
            await self._ensure_bucket(self._client)
        for attempt in (1, 2):
            try:
                await self._call(
                    "upload",
                    self._client.fput_object,
                    self.bucket,
                    key,
                    str(source),
                    content_type=CONTENT_TYPE,
                    part_size=PART_SIZE,
                    # One part in memory at a time (the SDK buffers each part).
                    num_parallel_uploads=1,
                )
                return
            except S3Error as exc:
                if exc.code == "NoSuchBucket" and attempt == 1:
                    # The bucket went away (an emulator restarted, an operator
                    # removed it): create it again and retry once.
                    log.warning("bucket %s is missing; creating it again", self.bucket)
                    self._bucket_ready = False
                    await self._ensure_bucket(self._client)
                    continue
                raise self._unavailable("upload", exc) from None

    def local_path(self, key: str) -> Path | None:
        return None  # the API streams the object through ``read``

    def presigned_url(self, key: str, ttl_seconds: int) -> str | None:
        """A presigned GET, computed locally (no network I/O)."""
        url: str = self._presigner.presigned_get_object(
            self.bucket, key, expires=timedelta(seconds=ttl_seconds)
        )
        return url

    async def read(self, key: str, chunk_size: int = 256 * 1024) -> AsyncGenerator[bytes, None]:
        """Stream the object; its connection goes back to the pool when done."""
        try:
            response = await self._call("download", self._client.get_object, self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ArtifactMissing(key) from None
            raise self._unavailable("download", exc) from None
        finished = False
        try:
            chunks = response.stream(chunk_size)
            while True:
                chunk = await self._call("download", next, chunks, None)
                if chunk is None:
                    finished = True
                    return
                yield chunk
        finally:
            if not finished:
                response.close()  # a half-read connection must not be reused
            response.release_conn()

    async def delete(self, key: str) -> None:
        try:
            await self._call("delete", self._client.remove_object, self.bucket, key)
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchBucket"):
                raise self._unavailable("delete", exc) from None

    async def ping(self) -> None:
        """Check the bucket (creating it if it went missing); raise when unreachable."""
        await self._ensure_bucket(self._probe)

    async def close(self) -> None:
        self._http.clear()
        self._probe_http.clear()

    # -- internals ------------------------------------------------------------------

    async def _ensure_bucket(self, client: Minio) -> None:
        try:
            exists = await self._call("bucket check", client.bucket_exists, self.bucket)
            if not exists:
                log.info("creating bucket %s at %s", self.bucket, self.location.endpoint.url)
                await self._call("bucket creation", client.make_bucket, self.bucket)
        except S3Error as exc:
            if exc.code not in _BUCKET_RACE:  # another replica created it meanwhile
                raise self._unavailable("bucket check", exc) from None
        self._bucket_ready = True

    async def _call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a thread; transport failures become unavailability.

        ``S3Error`` (the store answered with an error code) passes through for
        the caller to interpret.
        """
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except S3Error:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise self._unavailable(what, exc) from None

    def _unavailable(self, what: str, exc: BaseException) -> ArtifactStoreUnavailable:
        reason = _describe(exc)
        log.warning("artifact store %s: %s failed: %s", self.location.display, what, reason)
        return ArtifactStoreUnavailable(f"{what} failed: {reason}")


def _describe(exc: BaseException) -> str:
    """A short reason for logs: never a header, so never a credential."""
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return f"{type(exc).__name__}: {exc}"[:300]
