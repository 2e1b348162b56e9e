"""WASM function artifacts: upload, list, show, download, delete."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import aclosing
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError

from appliance.api.common import PRINCIPAL, json_response, principal, query_int
from appliance.artifacts import ArtifactMissing, ArtifactStoreUnavailable
from appliance.auth import Principal
from appliance.metrics import Metrics
from appliance.services import Services, services
from appliance.store.records import FunctionRecord
from appliance.uploads import StagedUpload, receive_upload
from appliance.wasm_check import validate_file
from edgesync.errors import (
    EdgesyncError,
    FunctionExists,
    HashMismatch,
    InvalidMultipart,
    NotFound,
    ValidationFailed,
)
from edgesync.protocol import (
    SHA256_RE,
    artifact_key,
    format_time,
    utcnow,
    validate_name,
    validate_version,
)

routes = web.RouteTableDef()
log = logging.getLogger("edgesync.functions")


@routes.post("/api/v1/functions")
async def upload(request: web.Request) -> web.Response:
    principal(request).require_admin()
    svc = services(request)
    staged = await _receive(request, svc.uploads.staging_dir, svc.config.max_upload_bytes)
    try:
        record = await _accept(svc, staged)
    finally:
        staged.discard()
    svc.metrics.upload_bytes.inc(record.size_bytes)
    return json_response(record.to_api(), status=201)


async def _receive(request: web.Request, staging: Path, max_bytes: int) -> StagedUpload:
    """The multipart form, or 400 ``INVALID_MULTIPART`` for any body aiohttp's
    multipart reader refuses: no or bad boundary, garbage, no closing boundary,
    oversized or broken part headers, unknown encodings (it raises plain
    ``ValueError``/``RuntimeError``/``TypeError`` or parser errors for these)."""
    try:
        return await receive_upload(request, staging, max_bytes)
    except EdgesyncError:
        raise
    except (ValueError, RuntimeError, TypeError, AssertionError, HttpProcessingError) as exc:
        log.info("refused a malformed multipart upload (%s)", type(exc).__name__)
        raise InvalidMultipart("the upload is not a well-formed multipart/form-data body") from exc


async def _accept(svc: Services, staged: StagedUpload) -> FunctionRecord:
    name = validate_name(staged.fields.get("name"))
    version = validate_version(staged.fields.get("version"))
    claimed = staged.fields.get("sha256", "").lower() or None
    if claimed is not None and not SHA256_RE.fullmatch(claimed):
        raise ValidationFailed("sha256 must be 64 hex digits", details={"field": "sha256"})
    requires_schema = _requires_schema(staged.fields.get("requires_schema"))
    if await svc.store.function_exists(name, version):
        raise _exists(name, version)
    if claimed is not None and claimed != staged.sha256:
        raise HashMismatch(
            "module bytes do not match the given sha256",
            details={"expected": claimed, "actual": staged.sha256},
        )
    assert staged.path is not None
    await validate_file(staged.path, staged.size)
    now = utcnow()
    record = FunctionRecord(
        id=str(uuid.uuid4()),
        name=name,
        version=version,
        sha256=staged.sha256,
        size_bytes=staged.size,
        storage_key=artifact_key(name, version),
        created_at=format_time(now),
        requires_schema=requires_schema,
    )
    # Claim the version first: only the claimant writes the object, so two
    # concurrent uploads of one version never mix their bytes (one 201, one 409).
    # A claim that is not published is released, or taken over by the next try.
    async with svc.uploads.claim(record) as claim:
        await svc.artifacts.put(record.storage_key, staged.path)
        await svc.uploads.publish(claim)
    return record


def _requires_schema(raw: str | None) -> int:
    """The optional ``requires_schema`` field: a schema version, default 0."""
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 9:
        raise ValidationFailed(
            "requires_schema must be a schema version (an integer >= 0)",
            details={"field": "requires_schema"},
        )
    return int(raw)


def _exists(name: str, version: str) -> FunctionExists:
    return FunctionExists(
        f"function {name} {version} already exists; versions are immutable",
        details={"name": name, "version": version},
    )


@routes.get("/api/v1/functions")
async def list_functions(request: web.Request) -> web.Response:
    principal(request).require_admin()
    name = request.query.get("name")
    if name is not None:
        validate_name(name)
    functions, cursor = await services(request).store.list_functions(
        name=name,
        limit=query_int(request, "limit", 100, 1, 1000),
        cursor=request.query.get("cursor"),
    )
    return json_response({"functions": [f.to_api() for f in functions], "next_cursor": cursor})


@routes.get("/api/v1/functions/{function_id}")
async def get_function(request: web.Request) -> web.Response:
    principal(request)  # admin or any node: both may read function metadata
    record = await services(request).store.get_function(_function_id(request))
    return json_response(record.to_api())


@routes.delete("/api/v1/functions/{function_id}")
async def delete_function(request: web.Request) -> web.Response:
    principal(request).require_admin()
    svc = services(request)
    record = await svc.store.delete_function(_function_id(request), utcnow())
    # Metadata first: from here on no plan names it, so the bytes can go.
    try:
        await svc.artifacts.delete(record.storage_key)
    except ArtifactStoreUnavailable:
        # The version is withdrawn already (a retried DELETE would say 404):
        # only its bytes are left behind, unreachable through the API.
        log.warning(
            "function %s deleted, but its object %s stays in the artifact store",
            record.id,
            record.storage_key,
        )
    return web.Response(status=204)


@routes.get("/api/v1/functions/{function_id}/download")
async def download(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    function_id = _function_id(request)
    caller: Principal | None = request.get(PRINCIPAL)
    if caller is None:  # no bearer token: the URL's signature is the credential
        svc.signer.verify(function_id, request.query.get("expires"), request.query.get("sig"))
    record = await svc.store.get_function(function_id)
    headers = {
        "Content-Type": "application/wasm",
        "X-Content-SHA256": record.sha256,
        "Cache-Control": "private, max-age=0, no-transform",
    }
    path = svc.artifacts.local_path(record.storage_key)
    if path is not None:
        if not path.exists():
            raise NotFound("function artifact is missing", details={"function_id": function_id})
        return _MeteredFileResponse(svc.metrics, path, headers=headers)
    started = time.perf_counter()
    # aclosing: a client that goes away mid-download releases the store's
    # connection now, not whenever the generator is collected.
    async with aclosing(svc.artifacts.read(record.storage_key)) as chunks:
        try:
            first = await anext(chunks)
        except (ArtifactMissing, StopAsyncIteration) as exc:
            raise NotFound(
                "function artifact is missing", details={"function_id": function_id}
            ) from exc
        response = web.StreamResponse(headers=headers)
        response.content_length = record.size_bytes
        await response.prepare(request)
        try:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        except Exception:
            # The status line is out: the only signal left is to cut the
            # connection, so the client sees fewer bytes than Content-Length
            # (an agent then retries; it checks the SHA-256 anyway).
            log.warning("download of function %s cut short", function_id)
            if request.transport is not None:
                request.transport.close()
            raise
    await response.write_eof()
    svc.metrics.download_bytes.inc(record.size_bytes)
    svc.metrics.download_seconds.observe(time.perf_counter() - started)
    return response


class _MeteredFileResponse(web.FileResponse):
    """A sendfile response that records its bytes and duration once sent."""

    def __init__(self, metrics: Metrics, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._metrics = metrics

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        started = time.perf_counter()
        writer = await super().prepare(request)
        self._metrics.download_bytes.inc(self.content_length or 0)
        self._metrics.download_seconds.observe(time.perf_counter() - started)
        return writer


def _function_id(request: web.Request) -> str:
    raw = request.match_info["function_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise NotFound("function not found", details={"function_id": raw}) from exc
