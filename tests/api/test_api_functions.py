"""Function artifacts: upload rules, immutability, limits, listing, delete, download."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_support import ADMIN, Api, expect_error, sha256
from yarl import URL

from appliance.wasm_check import IN_PROCESS_LIMIT
from edgesync.protocol import artifact_key, parse_time, utcnow


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def artifact_path(api: Api, name: str, version: str) -> Path:
    return api.config.data_dir / "artifacts" / "wasm-functions" / artifact_key(name, version)


async def function_rows(api: Api) -> int:
    row = await api.services.store.db.fetchone("SELECT COUNT(*) AS n FROM functions")
    assert row is not None
    return int(row["n"])


async def assert_nothing_left_behind(api: Api) -> None:
    assert files_under(api.config.data_dir / "artifacts") == []
    assert files_under(api.config.data_dir / "staging") == []
    assert await function_rows(api) == 0


# -- upload ------------------------------------------------------------------------------


async def test_upload_creates_function_and_object(api: Api, wasm) -> None:
    module = wasm.module(1)
    created = await api.upload_ok("hello", "1.2.0", module)
    assert set(created) == {
        "id",
        "name",
        "version",
        "sha256",
        "size_bytes",
        "requires_schema",
        "created_at",
    }
    assert created["requires_schema"] == 0
    assert uuid.UUID(created["id"])
    assert (created["name"], created["version"]) == ("hello", "1.2.0")
    assert created["sha256"] == sha256(module)
    assert created["size_bytes"] == len(module)
    assert abs((utcnow() - parse_time(created["created_at"])).total_seconds()) < 60
    # The seed's layout under the data dir.
    assert artifact_path(api, "hello", "1.2.0").read_bytes() == module
    assert files_under(api.config.data_dir / "staging") == []
    shown = await api.json("GET", f"/api/v1/functions/{created['id']}", headers=ADMIN)
    assert shown == created


async def test_upload_with_matching_sha256(api: Api, wasm) -> None:
    module = wasm.module(2)
    response = await api.upload("hello", "1", module, sha=sha256(module).upper())
    assert response.status == 201


async def test_hash_mismatch(api: Api, wasm) -> None:
    module = wasm.module(3)
    response = await api.upload("hello", "1", module, sha=sha256(b"other bytes"))
    error = await expect_error(response, 400, "HASH_MISMATCH")
    assert error["details"]["actual"] == sha256(module)
    await assert_nothing_left_behind(api)


async def test_malformed_sha256_field(api: Api, wasm) -> None:
    response = await api.upload("hello", "1", wasm.module(), sha="abc")
    await expect_error(response, 400, "VALIDATION_FAILED")


@pytest.mark.parametrize("name", ["Hello", "-x", "a" * 64, "hello/world", "..", "", "a b"])
async def test_invalid_name(api: Api, wasm, name: str) -> None:
    response = await api.upload(name, "1.0", wasm.module())
    await expect_error(response, 400, "INVALID_NAME")
    await assert_nothing_left_behind(api)


@pytest.mark.parametrize("version", ["", ".1", "1" * 51, "1/2", "../x", "1 0", "é"])
async def test_invalid_version(api: Api, wasm, version: str) -> None:
    response = await api.upload("hello", version, wasm.module())
    await expect_error(response, 400, "INVALID_VERSION")
    await assert_nothing_left_behind(api)


@pytest.mark.parametrize("kind", ["not_wasm", "invalid", "empty"])
async def test_invalid_wasm(api: Api, wasm, kind: str) -> None:
    module = {"not_wasm": wasm.not_wasm(), "invalid": wasm.invalid(), "empty": b""}[kind]
    response = await api.upload("hello", "1.0", module)
    await expect_error(response, 400, "INVALID_WASM")
    await assert_nothing_left_behind(api)


async def test_big_modules_are_validated_out_of_process(api: Api, wasm) -> None:
    size = IN_PROCESS_LIMIT + 256 * 1024
    big = wasm.big(size)
    created = await api.upload_ok("big", "1.0", big)
    assert created["size_bytes"] == len(big) > IN_PROCESS_LIMIT
    assert artifact_path(api, "big", "1.0").read_bytes() == big
    response = await api.upload("big", "2.0", wasm.invalid(size))
    await expect_error(response, 400, "INVALID_WASM")
    assert not artifact_path(api, "big", "2.0").exists()
    assert await function_rows(api) == 1


async def test_upload_missing_fields(api: Api, wasm) -> None:
    import aiohttp

    no_module = aiohttp.FormData({"name": "hello", "version": "1"})
    no_module.add_field("other", b"x", filename="x.bin")  # keep it multipart
    response = await api.post("/api/v1/functions", data=no_module, headers=ADMIN)
    error = await expect_error(response, 400, "VALIDATION_FAILED")
    assert error["details"]["field"] == "module"

    two = api.form("hello", "1", wasm.module())
    two.add_field("module", wasm.module(9), filename="again.wasm")
    response = await api.post("/api/v1/functions", data=two, headers=ADMIN)
    await expect_error(response, 400, "VALIDATION_FAILED")

    no_name = aiohttp.FormData({"version": "1"})
    no_name.add_field("module", wasm.module(), filename="f.wasm")
    response = await api.post("/api/v1/functions", data=no_name, headers=ADMIN)
    await expect_error(response, 400, "INVALID_NAME")
    await assert_nothing_left_behind(api)


# -- immutability ------------------------------------------------------------------------


async def test_function_exists_even_with_identical_bytes(api: Api, wasm) -> None:
    module = wasm.module(5)
    created = await api.upload_ok("hello", "1.0", module)
    for again in (module, wasm.module(6)):
        response = await api.upload("hello", "1.0", again)
        error = await expect_error(response, 409, "FUNCTION_EXISTS")
        assert error["details"] == {"name": "hello", "version": "1.0"}
    assert artifact_path(api, "hello", "1.0").read_bytes() == module
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert [f["id"] for f in listed["functions"]] == [created["id"]]


async def test_function_exists_after_delete(api: Api, wasm) -> None:
    created = await api.upload_ok("hello", "1.0", wasm.module(5))
    response = await api.delete(f"/api/v1/functions/{created['id']}", headers=ADMIN)
    assert response.status == 204
    response = await api.upload("hello", "1.0", wasm.module(5))
    await expect_error(response, 409, "FUNCTION_EXISTS")
    assert not artifact_path(api, "hello", "1.0").exists()


async def test_concurrent_uploads_of_one_version_have_one_winner(api: Api, wasm) -> None:
    modules = [wasm.module(100 + i) for i in range(5)]
    assert len({sha256(m) for m in modules}) == 5
    responses = await asyncio.gather(*(api.upload("race", "1.0", m) for m in modules))
    statuses = sorted(r.status for r in responses)
    assert statuses == [201, 409, 409, 409, 409]
    winner = next(r for r in responses if r.status == 201)
    created = await winner.json()
    for response in responses:
        if response.status == 409:
            await expect_error(response, 409, "FUNCTION_EXISTS")
    download = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    body = await download.read()
    assert sha256(body) == created["sha256"]
    assert body in modules
    assert await function_rows(api) == 1
    assert files_under(api.config.data_dir / "staging") == []


# -- size limit ----------------------------------------------------------------------------


async def test_oversize_upload_is_413_and_leaves_nothing(make_api, wasm) -> None:
    api: Api = await make_api(max_upload_mb=1)
    oversize = wasm.big(1024 * 1024 + 200 * 1024)
    response = await api.upload("big", "1.0", oversize)
    error = await expect_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert error["details"]["max_bytes"] == 1024 * 1024
    await assert_nothing_left_behind(api)


async def test_slightly_oversize_upload_is_caught_while_streaming(make_api, wasm) -> None:
    """Within the framing allowance of Content-Length: the streaming check refuses it."""
    api: Api = await make_api(max_upload_mb=1)
    response = await api.upload("big", "1.0", wasm.big(1024 * 1024 + 1))
    await expect_error(response, 413, "PAYLOAD_TOO_LARGE")
    await assert_nothing_left_behind(api)


async def test_chunked_oversize_upload_is_413_and_leaves_nothing(make_api, wasm) -> None:
    """No Content-Length at all: the limit holds while streaming to staging."""
    api: Api = await make_api(max_upload_mb=1)
    form = api.form("big", "1.0", wasm.big(3 * 1024 * 1024))
    payload = form()
    body = bytearray()

    class Sink:
        async def write(self, chunk: bytes) -> None:
            body.extend(chunk)

    await payload.write(Sink())  # type: ignore[arg-type]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield bytes(body[start : start + 64 * 1024])

    response = await api.post(
        "/api/v1/functions",
        data=chunks(),
        headers={**ADMIN, "Content-Type": payload.content_type},
    )
    await expect_error(response, 413, "PAYLOAD_TOO_LARGE")
    await assert_nothing_left_behind(api)
    # The server is still fine afterwards.
    assert (await api.upload("small", "1.0", wasm.module())).status == 201


async def test_upload_at_the_limit_is_accepted(make_api, wasm) -> None:
    api: Api = await make_api(max_upload_mb=1)
    module = wasm.big(1024 * 1024 - 4096)
    assert len(module) <= 1024 * 1024
    assert (await api.upload("edge", "1.0", module)).status == 201


# -- list, show, delete --------------------------------------------------------------------


async def test_list_functions_pages_and_filters(api: Api, wasm) -> None:
    ids = [(await api.upload_ok("alpha", f"{i}.0", wasm.module(i)))["id"] for i in range(5)]
    beta = await api.upload_ok("beta", "1.0", wasm.module(50))
    seen: list[str] = []
    cursor = None
    while True:
        query: dict[str, Any] = {"limit": "2", "name": "alpha"}
        if cursor:
            query["cursor"] = cursor
        page = await api.json("GET", "/api/v1/functions", params=query, headers=ADMIN)
        assert len(page["functions"]) <= 2
        seen += [f["id"] for f in page["functions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    everything = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert [f["id"] for f in everything["functions"]] == [*ids, beta["id"]]
    assert everything["next_cursor"] is None
    response = await api.get("/api/v1/functions", params={"name": "Bad"}, headers=ADMIN)
    await expect_error(response, 400, "INVALID_NAME")


async def test_unknown_function_is_404(api: Api) -> None:
    node = await api.register()
    for function_id in (str(uuid.uuid4()), "not-a-uuid"):
        for suffix in ("", "/download"):
            for headers in (ADMIN, node.headers):
                response = await api.get(
                    f"/api/v1/functions/{function_id}{suffix}", headers=headers
                )
                await expect_error(response, 404, "NOT_FOUND")
        response = await api.delete(f"/api/v1/functions/{function_id}", headers=ADMIN)
        await expect_error(response, 404, "NOT_FOUND")


async def test_delete_hides_function_and_removes_object(api: Api, wasm) -> None:
    created = await api.upload_ok("hello", "1.0", wasm.module())
    response = await api.delete(f"/api/v1/functions/{created['id']}", headers=ADMIN)
    assert response.status == 204
    assert await response.read() == b""
    assert not artifact_path(api, "hello", "1.0").exists()
    for path in (
        f"/api/v1/functions/{created['id']}",
        f"/api/v1/functions/{created['id']}/download",
    ):
        await expect_error(await api.get(path, headers=ADMIN), 404, "NOT_FOUND")
    again = await api.delete(f"/api/v1/functions/{created['id']}", headers=ADMIN)
    await expect_error(again, 404, "NOT_FOUND")
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert listed["functions"] == []


# -- download --------------------------------------------------------------------------------


async def test_download_with_admin_or_node_token(api: Api, wasm) -> None:
    module = wasm.module(7)
    created = await api.upload_ok("hello", "1.0", module)
    node = await api.register()
    for headers in (ADMIN, node.headers):
        response = await api.get(f"/api/v1/functions/{created['id']}/download", headers=headers)
        assert response.status == 200
        assert response.content_type == "application/wasm"
        assert response.headers["X-Content-SHA256"] == sha256(module)
        assert await response.read() == module


async def test_download_without_any_credential_is_401(api: Api, wasm) -> None:
    created = await api.upload_ok("hello", "1.0", wasm.module())
    response = await api.get(f"/api/v1/functions/{created['id']}/download")
    await expect_error(response, 401, "UNAUTHORIZED")


async def signed_url(api: Api, wasm) -> tuple[dict[str, Any], URL, bytes]:
    module = wasm.module(8)
    created = await api.upload_ok("hello", "1.0", module)
    node = await api.register()
    plan = await api.plan(node)
    deploy = plan["actions"][0]
    assert deploy["type"] == "deploy_function"
    return created, URL(deploy["download_url"]), module


async def test_signed_url_from_a_plan_downloads_without_a_token(api: Api, wasm) -> None:
    created, url, module = await signed_url(api, wasm)
    assert url.path == f"/api/v1/functions/{created['id']}/download"
    response = await api.get(url.path_qs)
    assert response.status == 200
    assert await response.read() == module


def with_query(url: URL, **changes: str) -> str:
    return str(url.with_query({**url.query, **changes}).path_qs)


async def test_tampered_signed_urls_are_403(api: Api, wasm) -> None:
    _, url, _ = await signed_url(api, wasm)
    other = await api.upload_ok("other", "1.0", wasm.module(99))
    sig, expires = url.query["sig"], url.query["expires"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    tampered = [
        with_query(url, sig=flipped),
        with_query(url, sig=sig[:-4]),
        with_query(url, expires=str(int(expires) + 3600)),
        with_query(url, expires="never"),
        with_query(url, expires="²"),
        with_query(url, sig="é" * 64),
        str(url.with_query({"sig": sig}).path_qs),  # expires dropped
        # The same signature and expiry on another function's download.
        str(URL(f"/api/v1/functions/{other['id']}/download").with_query(url.query)),
    ]
    for path_qs in tampered:
        response = await api.get(path_qs)
        await expect_error(response, 403, "URL_EXPIRED_OR_INVALID")


async def test_expired_signed_url_is_403(api: Api, wasm) -> None:
    created = await api.upload_ok("hello", "1.0", wasm.module())
    expires, sig = api.services.signer.sign(created["id"], now=time.time() - 10_000)
    response = await api.get(
        f"/api/v1/functions/{created['id']}/download", params={"expires": expires, "sig": sig}
    )
    error = await expect_error(response, 403, "URL_EXPIRED_OR_INVALID")
    assert "expired" in error["message"]


async def test_signed_url_of_a_deleted_function_is_404(api: Api, wasm) -> None:
    created, url, _ = await signed_url(api, wasm)
    await api.delete(f"/api/v1/functions/{created['id']}", headers=ADMIN)
    response = await api.get(url.path_qs)
    await expect_error(response, 404, "NOT_FOUND")


async def test_signature_does_not_bypass_a_bad_bearer(api: Api, wasm) -> None:
    _, url, _ = await signed_url(api, wasm)
    response = await api.get(url.path_qs, headers={"Authorization": "Bearer wrong"})
    await expect_error(response, 401, "UNAUTHORIZED")


async def test_orphan_object_from_a_crashed_upload_is_replaced(api: Api, wasm) -> None:
    """An object with no row (a crash between storing and recording) does not block."""
    orphan = artifact_path(api, "hello", "1.0")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half-written leftovers")
    module = wasm.module(11)
    created = await api.upload_ok("hello", "1.0", module)
    assert orphan.read_bytes() == module
    download = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    assert await download.read() == module
