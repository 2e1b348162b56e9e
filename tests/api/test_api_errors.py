"""The error envelope: every non-2xx answer has one shape and leaks nothing."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from api_support import ADMIN, Api, check_error, expect_error
from yarl import URL

from appliance.artifacts import ArtifactStoreUnavailable


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/nope"),
        ("GET", "/nope"),
        ("POST", "/api/v1/nodes/x/y/z"),
        ("GET", "/api/v1/functions/x/download/extra"),
    ],
)
async def test_unknown_route_is_404_not_found(api: Api, method: str, path: str) -> None:
    # With and without credentials: an unknown route is never an auth question.
    for headers in ({}, ADMIN):
        response = await api.client.request(method, path, headers=headers)
        await expect_error(response, 404, "NOT_FOUND")


async def test_wrong_method_is_405_with_allow(api: Api) -> None:
    response = await api.client.request("PUT", "/api/v1/schemas", headers=ADMIN)
    await expect_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"version": 1,}', b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"null"],
)
async def test_malformed_json_is_400_invalid_json(api: Api, raw: bytes) -> None:
    response = await api.post(
        "/api/v1/schemas",
        data=raw,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    await expect_error(response, 400, "INVALID_JSON")


async def test_empty_body_where_one_is_required_is_invalid_json(api: Api) -> None:
    response = await api.post("/api/v1/nodes/register", data=b"", headers={})
    await expect_error(response, 400, "INVALID_JSON")


async def test_invalid_json_on_public_and_node_routes(api: Api) -> None:
    node = await api.register()
    for path, headers in (
        ("/api/v1/nodes/register", {}),
        (f"/api/v1/nodes/{node.id}/sync/ack", node.headers),
        (f"/api/v1/nodes/{node.id}/heartbeat", node.headers),
        ("/api/v1/enrollment-tokens", ADMIN),
    ):
        response = await api.post(
            path, data=b"{oops", headers={**headers, "Content-Type": "application/json"}
        )
        await expect_error(response, 400, "INVALID_JSON")


async def test_json_body_over_the_limit_is_413(api: Api) -> None:
    body = b'{"version": 1, "up_sql": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = await api.post(
        "/api/v1/schemas", data=body, headers={**ADMIN, "Content-Type": "application/json"}
    )
    await expect_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_unsupported_media_type(api: Api) -> None:
    response = await api.post(
        "/api/v1/schemas",
        data=b"version=1",
        headers={**ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
    )
    await expect_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    response = await api.post("/api/v1/functions", json={"name": "x"}, headers=ADMIN)
    await expect_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize(
    "body",
    [
        {"enrollment_token": "est_x.y"},
        {"name": "", "enrollment_token": "est_x.y"},
        {"name": 5, "enrollment_token": "est_x.y"},
        {"name": "n" * 101, "enrollment_token": "est_x.y"},
        {"name": "edge", "labels": ["a"], "enrollment_token": "est_x.y"},
        {"name": "edge", "labels": {"k": 1}, "enrollment_token": "est_x.y"},
        {"name": "edge", "region": 7, "enrollment_token": "est_x.y"},
    ],
)
async def test_registration_validation_failed(api: Api, body: dict[str, object]) -> None:
    response = await api.post("/api/v1/nodes/register", json=body)
    error = await expect_error(response, 400, "VALIDATION_FAILED")
    assert "field" in error["details"]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"status": "sleeping"},
        {"cursor": "%%%"},
        {"cursor": "YWJj"},
    ],
)
async def test_list_nodes_validation_failed(api: Api, query: dict[str, str]) -> None:
    response = await api.get("/api/v1/nodes", params=query, headers=ADMIN)
    await expect_error(response, 400, "VALIDATION_FAILED")


@pytest.mark.parametrize("limit", ["0", "501", "-1", "x"])
async def test_history_limit_is_bounded(api: Api, limit: str) -> None:
    node = await api.register()
    response = await api.get(
        f"/api/v1/nodes/{node.id}/sync/history", params={"limit": limit}, headers=node.headers
    )
    await expect_error(response, 400, "VALIDATION_FAILED")
    ok = await api.get(
        f"/api/v1/nodes/{node.id}/sync/history", params={"limit": "500"}, headers=node.headers
    )
    assert ok.status == 200


@pytest.mark.parametrize(
    "body",
    [
        {"ttl_seconds": 0},
        {"ttl_seconds": "60"},
        {"ttl_seconds": True},
        {"max_uses": 0},
        {"max_uses": 1.5},
        {"region": ["eu"]},
    ],
)
async def test_enrollment_token_validation_failed(api: Api, body: dict[str, object]) -> None:
    response = await api.post("/api/v1/enrollment-tokens", json=body, headers=ADMIN)
    await expect_error(response, 400, "VALIDATION_FAILED")


async def test_ack_validation_failed(api: Api) -> None:
    node = await api.register()
    for body in (
        {"sync_id": str(uuid.uuid4()), "status": "maybe", "state": {}},
        {"status": "success", "state": {"schema_version": 0, "functions": []}},
        {"sync_id": "s", "status": "failed", "state": {"schema_version": 0, "functions": []}},
        {"sync_id": "s", "status": "success", "state": {"schema_version": -1, "functions": []}},
    ):
        response = await api.post(
            f"/api/v1/nodes/{node.id}/sync/ack", json=body, headers=node.headers
        )
        error = await expect_error(response, 400, "VALIDATION_FAILED")
        assert error["details"]["field"].startswith("ack")


async def test_ack_with_invalid_function_name_is_invalid_name(api: Api) -> None:
    node = await api.register()
    state = {
        "schema_version": 0,
        "functions": [{"name": "Bad Name", "version": "1", "sha256": "a" * 64}],
    }
    response = await api.ack(node, str(uuid.uuid4()), state)
    await expect_error(response, 400, "INVALID_NAME")


async def test_error_responses_are_json_utf8(api: Api) -> None:
    response = await api.get("/api/v1/nodes")
    await expect_error(response, 401, "UNAUTHORIZED")
    assert response.charset == "utf-8"
    assert response.headers["WWW-Authenticate"] == "Bearer"


# -- hostile bodies: always a 4xx envelope, never a 5xx ------------------------------------

BOUNDARY = "edgesyncboundary"


def part(name: str, value: bytes, extra: str = "") -> bytes:
    header = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'
    return header.encode() + value + b"\r\n"


CLOSE = f"--{BOUNDARY}--\r\n".encode()
GOOD_FIELDS = part("name", b"hello") + part("version", b"1.0")


def malformed_uploads(module: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, body) pairs the multipart reader must refuse."""
    mp = f"multipart/form-data; boundary={BOUNDARY}"
    good_module = part("module", module, '; filename="f.wasm"')
    return [
        ("multipart/form-data", GOOD_FIELDS + good_module + CLOSE),  # no boundary
        ("multipart/form-data; boundary=", b"--\r\n"),
        (f"multipart/form-data; boundary={'b' * 80}", b"x"),  # boundary too long
        (mp, b"this is no multipart body at all"),
        (mp, b"\x00\xff" * 500),
        (mp, GOOD_FIELDS + good_module),  # no closing boundary
        (mp, GOOD_FIELDS + good_module[:-40]),  # cut in the middle of the module
        (mp, f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"a" * 20000 + b"\r\n\r\nv\r\n" + CLOSE),
        (mp, f"--{BOUNDARY}\r\n".encode() + b"no colon header\r\n\r\nv\r\n" + CLOSE),
        (mp, b"".join(f"--{BOUNDARY}\r\nX-H{i}: v\r\n".encode() for i in range(300))),
        (
            mp,
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="module"\r\n'
            "Content-Transfer-Encoding: rot13\r\n\r\nabc\r\n".encode()
            + CLOSE,
        ),
        (mp, GOOD_FIELDS + part("name", b"again") + good_module + CLOSE),  # duplicate field
        (mp, GOOD_FIELDS + good_module + good_module + CLOSE),  # duplicate module
        (mp, GOOD_FIELDS + CLOSE),  # the module part is missing
        (mp, part("version", b"1.0") + good_module + CLOSE),  # the name is missing
    ]


async def test_malformed_multipart_uploads_are_400_and_store_nothing(api: Api, wasm) -> None:
    staging = api.config.data_dir / "staging"
    for index, (content_type, body) in enumerate(malformed_uploads(wasm.module())):
        response = await api.post(
            "/api/v1/functions", data=body, headers={**ADMIN, "Content-Type": content_type}
        )
        text = await response.text()
        assert response.status == 400, (index, text)
        check_error(response.status, text, 400, json.loads(text)["error"]["code"])
        assert json.loads(text)["error"]["code"] in (
            "INVALID_MULTIPART",
            "VALIDATION_FAILED",
            "INVALID_NAME",
        ), (index, text)
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert listed["functions"] == []
    assert [p for p in staging.rglob("*") if p.is_file()] == []
    await api.upload_ok("hello", "1.0", wasm.module())  # and the route still works


def json_routes(node_id: str) -> list[tuple[str, dict[str, str] | None]]:
    return [
        ("/api/v1/nodes/register", None),
        (f"/api/v1/nodes/{node_id}/sync/ack", {}),
        (f"/api/v1/nodes/{node_id}/heartbeat", {}),
        (f"/api/v1/nodes/{node_id}/token/rotate", {}),
        ("/api/v1/enrollment-tokens", ADMIN),
        ("/api/v1/schemas", ADMIN),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError inside json
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"region": "\\ud800"}',  # a lone surrogate: once a 503 from the store
        b'{"region": "\xed\xa0\x80"}',  # the same surrogate, UTF-8-encoded: also a 503
        b'{"name": "x\\udfff", "enrollment_token": "est_a.b"}',
        b'{"version": 1, "up_sql": "\\ud83d"}',
        b'{"ttl_seconds": NaN}',
        b'{"ttl_seconds": Infinity}',
        b'{"ttl_seconds": 1e999}',
        b'{"max_uses": 9223372036854775808}',  # 2^63
        b'{"version": 99999999999999999999999999999999}',
        b'{"a": -9223372036854775809}',
    ],
)
async def test_hostile_json_is_400_on_every_json_route(api: Api, raw: bytes) -> None:
    node = await api.register()
    for path, headers in json_routes(node.id):
        auth = node.headers if headers == {} else (headers or {})
        response = await api.post(
            path, data=raw, headers={**auth, "Content-Type": "application/json"}
        )
        text = await response.text()
        assert 400 <= response.status < 500, (path, text)
        check_error(response.status, text, response.status, json.loads(text)["error"]["code"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schema_version", 2**63),
        ("schema_version", 2**63 - 1),
        ("schema_version", 2**31),
        ("schema_version", 2**64 + 5),
    ],
)
async def test_ack_with_an_overflowing_schema_version_is_400(
    api: Api, field: str, value: int
) -> None:
    await api.add_schema(1, "CREATE TABLE t (x INTEGER)")
    node = await api.register()
    plan = await api.plan(node)
    state = {**plan["target"], field: value}
    failure = {"code": "MIGRATION_FAILED", "message": "m", "details": {}, "retryable": False}
    for status, error in (("failed", failure), ("success", None)):
        response = await api.ack(node, plan["sync_id"], state, status, error)
        text = await response.text()
        assert response.status == 400, text
        code = json.loads(text)["error"]["code"]
        assert code in ("INVALID_JSON", "VALIDATION_FAILED")
    await api.apply(node, plan)  # the sync is still open for a sane ack


@pytest.mark.parametrize("version", [2**31, 2**63, -(2**63)])
async def test_migration_version_overflow_is_400(api: Api, version: int) -> None:
    response = await api.post(
        "/api/v1/schemas", json={"version": version, "up_sql": "CREATE TABLE t (x)"}, headers=ADMIN
    )
    text = await response.text()
    assert response.status == 400, text


@pytest.mark.parametrize(
    "body", [{"ttl_seconds": 2**63}, {"max_uses": 2**63 - 1}, {"ttl_seconds": -(2**63)}]
)
async def test_enrollment_token_integer_overflow_is_400(api: Api, body: dict[str, int]) -> None:
    response = await api.post("/api/v1/enrollment-tokens", json=body, headers=ADMIN)
    text = await response.text()
    assert response.status == 400, text


async def test_gzip_encoded_garbage_is_400(api: Api) -> None:
    # (An encoding the server cannot decode at all fails while parsing the headers,
    # before the app: tests/api/test_http_server.py covers that over a socket.)
    for encoding in ("gzip", "deflate"):
        response = await api.post(
            "/api/v1/enrollment-tokens",
            data=b"this is not compressed at all",
            headers={**ADMIN, "Content-Type": "application/json", "Content-Encoding": encoding},
        )
        text = await response.text()
        assert 400 <= response.status < 500, (encoding, text)
        check_error(response.status, text, response.status, json.loads(text)["error"]["code"])


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/nodes/%00",
        "/api/v1/nodes/%00/sync/history",
        "/api/v1/functions/%00",
        "/api/v1/nodes?region=%00",
        "/api/v1/nodes?status=online%00",
        "/api/v1/functions?cursor=%00",
        "/api/v1/nodes?%00=1",
    ],
)
async def test_nul_in_the_request_target_is_400(api: Api, target: str) -> None:
    # PostgreSQL text cannot hold a NUL: once a 500 there, while SQLite said 404.
    response = await api.get(URL(target, encoded=True), headers=ADMIN)
    await expect_error(response, 400, "MALFORMED_REQUEST")


async def test_nul_in_any_json_string_is_400(api: Api) -> None:
    node = await api.register()
    for path, headers, body in (
        ("/api/v1/enrollment-tokens", ADMIN, {"region": "eu\u0000"}),
        ("/api/v1/nodes/register", {}, {"name": "a\u0000b", "enrollment_token": "est_a.b"}),
        ("/api/v1/nodes/register", {}, {"name": "a", "labels": {"k\u0000": "v"}}),
        (f"/api/v1/nodes/{node.id}/heartbeat", node.headers, {"agent_version": "1\u0000"}),
        ("/api/v1/schemas", ADMIN, {"version": 1, "up_sql": "SELECT 1", "description": "\u0000"}),
    ):
        response = await api.post(path, json=body, headers=headers)
        await expect_error(response, 400, "INVALID_JSON")


async def test_signed_url_with_an_absurd_expiry_is_403(api: Api, wasm) -> None:
    function = await api.upload_ok("hello", "1.0", wasm.module())
    for expires in ("1" * 5000, "9" * 13, "１２３"):
        response = await api.get(
            f"/api/v1/functions/{function['id']}/download",
            params={"expires": expires, "sig": "0" * 64},
        )
        await expect_error(response, 403, "URL_EXPIRED_OR_INVALID")


async def test_an_unavailable_store_logs_no_download_signature(
    api: Api, wasm, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    url = URL((await api.plan(node))["actions"][0]["download_url"])

    def unavailable(key: str) -> None:
        raise ArtifactStoreUnavailable("the store is down")

    monkeypatch.setattr(api.services.artifacts, "local_path", unavailable)
    response = await api.get(url.path_qs)
    await expect_error(response, 503, "SERVICE_UNAVAILABLE")
    # The app's loggers (aiohttp.access is the test server's; serve runs without it).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("edgesync"))
    assert "artifact store unavailable" in logged
    assert url.query["sig"] not in logged
