"""The error envelope: every non-2xx answer has one shape and leaks nothing."""

from __future__ import annotations

import uuid

import pytest
from api_support import ADMIN, Api, expect_error


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
