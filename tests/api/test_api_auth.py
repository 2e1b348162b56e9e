"""Authentication and authorization over HTTP: 401s, the BOLA matrix, enrollment."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import jwt
import pytest
from api_support import ADMIN, ADMIN_TOKEN, Api, Node, expect_error
from yarl import URL

from edgesync.protocol import format_time, utcnow

# -- 401 UNAUTHORIZED ---------------------------------------------------------------

PROTECTED = [
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/functions"),
    ("POST", "/api/v1/enrollment-tokens"),
    ("GET", "/api/v1/schemas"),
    ("POST", "/api/v1/schemas"),
    ("POST", "/api/v1/functions"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "header",
    [
        None,
        ADMIN_TOKEN,  # no scheme
        f"Basic {ADMIN_TOKEN}",
        "Bearer",
        "Bearer ",
        "Bearer not-a-token",
        "Bearer a.b.c",
        f"Bearer {ADMIN_TOKEN}-but-longer",
    ],
)
async def test_missing_or_malformed_token_is_401(
    api: Api, method: str, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await api.client.request(method, path, headers=headers)
    await expect_error(response, 401, "UNAUTHORIZED")


def node_routes(node_id: str) -> list[tuple[str, str]]:
    return [
        ("POST", f"/api/v1/nodes/{node_id}/heartbeat"),
        ("POST", f"/api/v1/nodes/{node_id}/token/rotate"),
        ("GET", f"/api/v1/nodes/{node_id}/sync"),
        ("POST", f"/api/v1/nodes/{node_id}/sync/ack"),
        ("GET", f"/api/v1/nodes/{node_id}/sync/history"),
        ("GET", f"/api/v1/nodes/{node_id}"),
    ]


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


async def assert_all_401(api: Api, node: Node, token: str) -> None:
    for method, path in node_routes(node.id):
        response = await api.client.request(
            method, path, json={}, headers={"Authorization": f"Bearer {token}"}
        )
        await expect_error(response, 401, "UNAUTHORIZED")


async def test_wrongly_signed_node_token_is_401(api: Api) -> None:
    node = await api.register()
    forged = jwt.encode(claims_of(node.token), "not-the-server-key" * 4, algorithm="HS256")
    await assert_all_401(api, node, forged)
    unsigned = jwt.encode(claims_of(node.token), None, algorithm="none")
    await assert_all_401(api, node, unsigned)
    header, payload, signature = node.token.split(".")
    await assert_all_401(api, node, f"{header}.{payload}.{signature[::-1]}")


async def test_expired_node_token_is_401(api: Api) -> None:
    node = await api.register()
    authority = api.services.authority
    # Make an expired token the node's current one: only its age refuses it.
    expired = authority.issue_node_token(node.id, utcnow() - timedelta(days=91))
    swapped = await api.services.store.rotate_token(
        node.id,
        str(claims_of(node.token)["jti"]),
        expired.jti,
        expired.digest,
        format_time(expired.expires_at),
    )
    assert swapped
    await assert_all_401(api, node, expired.token)


async def test_rotated_away_token_is_401(api: Api) -> None:
    node = await api.register()
    # Use the token first, so it sits in every cache before it is retired.
    assert (await api.plan(node))["etag"]
    rotated = await api.json(
        "POST", f"/api/v1/nodes/{node.id}/token/rotate", json={}, headers=node.headers
    )
    assert set(rotated) == {"token", "token_expires_at"}
    assert rotated["token"] != node.token
    await assert_all_401(api, node, node.token)
    new = Node(node.id, rotated["token"], node.body)
    assert (await api.plan(new))["etag"]
    # The old token cannot rotate again either.
    again = await api.post(f"/api/v1/nodes/{node.id}/token/rotate", json={}, headers=node.headers)
    await expect_error(again, 401, "UNAUTHORIZED")


async def test_a_lost_rotation_answer_can_be_asked_for_again(api: Api) -> None:
    """The node chooses the new jti; with the old token it may repeat exactly that rotation."""
    import jwt

    node = await api.register()
    path = f"/api/v1/nodes/{node.id}/token/rotate"
    chosen = "ab" * 16
    first = await api.json("POST", path, json={"jti": chosen}, headers=node.headers)
    assert jwt.decode(first["token"], options={"verify_signature": False})["jti"] == chosen
    await assert_all_401(api, node, node.token)  # the old token opens nothing else
    # The answer was lost: the old token asks for the same rotation and gets it.
    again = await api.json("POST", path, json={"jti": chosen}, headers=node.headers)
    assert jwt.decode(again["token"], options={"verify_signature": False})["jti"] == chosen
    assert (await api.plan(Node(node.id, again["token"], node.body)))["etag"]
    assert (await api.plan(Node(node.id, first["token"], node.body)))["etag"]
    # But it cannot choose another token, nor rotate without naming the one it chose.
    other = await api.post(path, json={"jti": "cd" * 16}, headers=node.headers)
    await expect_error(other, 401, "UNAUTHORIZED")
    await expect_error(await api.post(path, json={}, headers=node.headers), 401, "UNAUTHORIZED")


async def test_a_chosen_jti_must_be_32_hex_digits(api: Api) -> None:
    node = await api.register()
    path = f"/api/v1/nodes/{node.id}/token/rotate"
    for bad in ("short", "AB" * 16, 42, "g" * 32):
        response = await api.post(path, json={"jti": bad}, headers=node.headers)
        await expect_error(response, 400, "VALIDATION_FAILED")


async def test_rotation_with_an_empty_body(api: Api) -> None:
    node = await api.register()
    response = await api.post(f"/api/v1/nodes/{node.id}/token/rotate", headers=node.headers)
    assert response.status == 200


async def test_token_of_a_node_issued_by_another_server_is_401(make_api) -> None:
    first = await make_api()
    second = await make_api()
    node = await first.register()
    response = await second.get(f"/api/v1/nodes/{node.id}/sync", headers=node.headers)
    await expect_error(response, 401, "UNAUTHORIZED")


# -- 403 FORBIDDEN: the BOLA matrix -----------------------------------------------------


async def test_node_token_opens_only_its_own_node_routes(api: Api) -> None:
    mine = await api.register()
    theirs = await api.register()
    for method, path in node_routes(theirs.id):
        response = await api.client.request(method, path, json={}, headers=mine.headers)
        error = await expect_error(response, 403, "FORBIDDEN")
        assert theirs.id not in error["message"]
    # ...an unknown node id is forbidden too, not a way to probe for nodes.
    for method, path in node_routes(str(uuid.uuid4())):
        response = await api.client.request(method, path, json={}, headers=mine.headers)
        await expect_error(response, 403, "FORBIDDEN")
    # ...and nothing happened to the other node.
    assert (await api.node(theirs))["last_sync_at"] is None
    assert (await api.history(theirs)) == []
    assert (await api.plan(theirs))["etag"]


async def test_own_node_routes_work_with_own_token(api: Api) -> None:
    node = await api.register()
    beat = await api.json(
        "POST", f"/api/v1/nodes/{node.id}/heartbeat", json={}, headers=node.headers
    )
    assert beat["status"] == "online" and beat["server_time"]
    shown = await api.json("GET", f"/api/v1/nodes/{node.id}", headers=node.headers)
    assert shown["id"] == node.id
    assert await api.history(node) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/nodes"),
        ("POST", "/api/v1/functions"),
        ("GET", "/api/v1/functions"),
        ("POST", "/api/v1/enrollment-tokens"),
        ("POST", "/api/v1/schemas"),
    ],
)
async def test_admin_routes_refuse_node_tokens(api: Api, method: str, path: str) -> None:
    node = await api.register()
    response = await api.client.request(method, path, json={}, headers=node.headers)
    await expect_error(response, 403, "FORBIDDEN")


async def test_node_cannot_upload_or_delete_functions(api: Api, wasm) -> None:
    node = await api.register()
    response = await api.upload("hello", "1.0", wasm.module(), headers=node.headers)
    await expect_error(response, 403, "FORBIDDEN")
    created = await api.upload_ok("hello", "1.0", wasm.module())
    response = await api.delete(f"/api/v1/functions/{created['id']}", headers=node.headers)
    await expect_error(response, 403, "FORBIDDEN")
    # The function is untouched, and any node may read its metadata.
    shown = await api.json("GET", f"/api/v1/functions/{created['id']}", headers=node.headers)
    assert shown == created
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert [f["id"] for f in listed["functions"]] == [created["id"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/heartbeat"),
        ("POST", "/token/rotate"),
        ("GET", "/sync"),
        ("POST", "/sync/ack"),
    ],
)
async def test_node_only_routes_refuse_the_admin(api: Api, method: str, path: str) -> None:
    node = await api.register()
    response = await api.client.request(
        method, f"/api/v1/nodes/{node.id}{path}", json={}, headers=ADMIN
    )
    await expect_error(response, 403, "FORBIDDEN")


async def test_admin_reads_any_node(api: Api) -> None:
    node = await api.register()
    assert (await api.node(node))["id"] == node.id
    history = await api.json("GET", f"/api/v1/nodes/{node.id}/sync/history", headers=ADMIN)
    assert history == {"records": []}


async def test_admin_gets_404_for_unknown_node(api: Api) -> None:
    ghost = str(uuid.uuid4())
    for path in (f"/api/v1/nodes/{ghost}", f"/api/v1/nodes/{ghost}/sync/history"):
        response = await api.get(path, headers=ADMIN)
        await expect_error(response, 404, "NOT_FOUND")


# -- enrollment and registration ---------------------------------------------------------


async def test_enrollment_token_defaults(api: Api) -> None:
    created = await api.json("POST", "/api/v1/enrollment-tokens", 201, headers=ADMIN)
    assert created["max_uses"] == 1
    expires = created["expires_at"]
    assert format_time(utcnow() + timedelta(minutes=59)) < expires
    assert expires < format_time(utcnow() + timedelta(minutes=61))


async def test_registration_response_and_region_from_token(api: Api) -> None:
    token = await api.enrollment_token(ttl_seconds=600, max_uses=2, region="eu-west")
    node = await api.register("edge-a", enrollment_token=token, labels={"rack": "7"})
    body = node.body
    assert set(body) >= {
        "node_id",
        "token",
        "token_expires_at",
        "poll_interval_seconds",
        "mqtt",
    }
    assert body["poll_interval_seconds"] == api.config.poll_interval_seconds
    assert body["mqtt"] is None
    claims = claims_of(node.token)
    assert claims["sub"] == node.id and claims["jti"]
    assert int(claims["exp"]) - int(claims["iat"]) == 90 * 24 * 3600  # type: ignore[call-overload]
    shown = await api.node(node)
    assert (shown["name"], shown["region"], shown["labels"]) == ("edge-a", "eu-west", {"rack": "7"})
    explicit = await api.register("edge-b", enrollment_token=token, region="us")
    assert (await api.node(explicit))["region"] == "us"


async def test_enrollment_token_max_uses(api: Api) -> None:
    token = await api.enrollment_token(max_uses=2)
    await api.register(enrollment_token=token)
    await api.register(enrollment_token=token)
    response = await api.post(
        "/api/v1/nodes/register", json={"name": "third", "enrollment_token": token}
    )
    await expect_error(response, 401, "INVALID_ENROLLMENT_TOKEN")
    listed = await api.json("GET", "/api/v1/nodes", headers=ADMIN)
    assert len(listed["nodes"]) == 2


async def test_expired_enrollment_token(api: Api) -> None:
    token = await api.enrollment_token(ttl_seconds=60)
    token_id = token[len("est_") :].split(".", 1)[0]
    # Age the token in the database instead of sleeping.
    await api.services.store.db.execute(
        "UPDATE enrollment_tokens SET expires_at = ? WHERE id = ?",
        (format_time(utcnow() - timedelta(seconds=1)), token_id),
    )
    response = await api.post(
        "/api/v1/nodes/register", json={"name": "late", "enrollment_token": token}
    )
    await expect_error(response, 401, "INVALID_ENROLLMENT_TOKEN")


@pytest.mark.parametrize("token", [None, "", "garbage", "est_", "est_abc", "est_abc.def", 42])
async def test_invalid_enrollment_token(api: Api, token: object) -> None:
    response = await api.post(
        "/api/v1/nodes/register", json={"name": "edge", "enrollment_token": token}
    )
    await expect_error(response, 401, "INVALID_ENROLLMENT_TOKEN")


async def test_node_token_is_not_an_enrollment_token(api: Api) -> None:
    node = await api.register()
    response = await api.post(
        "/api/v1/nodes/register", json={"name": "edge", "enrollment_token": node.token}
    )
    await expect_error(response, 401, "INVALID_ENROLLMENT_TOKEN")


async def test_concurrent_registrations_respect_max_uses(api: Api) -> None:
    import asyncio

    token = await api.enrollment_token(max_uses=2)
    responses = await asyncio.gather(
        *(
            api.post("/api/v1/nodes/register", json={"name": f"n{i}", "enrollment_token": token})
            for i in range(6)
        )
    )
    assert sorted(r.status for r in responses) == [201, 201, 401, 401, 401, 401]


# -- secrets stay out of logs --------------------------------------------------------------


async def test_tokens_never_reach_the_logs(
    api: Api, wasm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    enrollment = await api.enrollment_token()
    node = await api.register(enrollment_token=enrollment)
    await api.upload_ok("hello", "1.0", wasm.module())
    plan = await api.plan(node)
    url = plan["actions"][0]["download_url"]
    signature = url.split("sig=", 1)[1]
    download = await api.get(URL(url).path_qs)
    assert download.status == 200
    await api.apply(node, plan)
    rotated = await api.json(
        "POST", f"/api/v1/nodes/{node.id}/token/rotate", json={}, headers=node.headers
    )
    bad = await api.get("/api/v1/nodes", headers={"Authorization": "Bearer wrong-secret-value"})
    assert bad.status == 401
    access = [r for r in caplog.records if r.name == "edgesync.access"]
    assert len(access) >= 7, "the access log must see every request"
    # The app's own loggers. (aiohttp.access is the test server's default logger;
    # ``edgesync serve`` runs with access_log=None.)
    everything = "\n".join(
        r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.startswith("edgesync")
    )
    for secret in (
        ADMIN_TOKEN,
        enrollment,
        enrollment.split(".", 1)[1],
        node.token,
        rotated["token"],
        signature,
        "wrong-secret-value",
    ):
        assert secret not in everything
    assert node.id in everything  # the log does say who called


async def test_admin_token_is_compared_in_full(api: Api) -> None:
    for token in (ADMIN_TOKEN[:-1], ADMIN_TOKEN.upper(), ADMIN_TOKEN + " x"):
        response = await api.get("/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
        await expect_error(response, 401, "UNAUTHORIZED")
    response = await api.get("/api/v1/nodes", headers={"Authorization": f"Bearer  {ADMIN_TOKEN} "})
    # Surrounding whitespace is not part of the token.
    assert response.status == 200


# -- strict node tokens (RFC 8725) ---------------------------------------------------------


def signing_key(api: Api) -> str:
    return api.services.authority._signing_key  # the server's own key: only claims differ


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "9999999999"},  # right value, wrong type: PyJWT alone accepts it
        {"iat": "1700000000"},
        {"exp": True},
        {"exp": None},
        {"sub": 7},
        {"jti": ["a"]},
        {"iss": "someone-else"},
    ],
)
async def test_node_token_claims_must_have_their_types(api: Api, change: dict[str, object]) -> None:
    node = await api.register()
    claims = {**claims_of(node.token), **change}
    forged = jwt.encode(claims, signing_key(api), algorithm="HS256", headers={"typ": "JWT"})
    await assert_all_401(api, node, forged)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "jti"])
async def test_node_token_without_a_required_claim_is_401(api: Api, missing: str) -> None:
    node = await api.register()
    claims = {k: v for k, v in claims_of(node.token).items() if k != missing}
    forged = jwt.encode(claims, signing_key(api), algorithm="HS256")
    await assert_all_401(api, node, forged)


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
async def test_node_token_algorithm_is_pinned(api: Api, algorithm: str) -> None:
    # The right key and claims under another algorithm: refused all the same.
    node = await api.register()
    forged = jwt.encode(claims_of(node.token), signing_key(api), algorithm=algorithm)
    await assert_all_401(api, node, forged)


async def test_node_token_of_another_type_is_401(api: Api) -> None:
    node = await api.register()
    forged = jwt.encode(
        claims_of(node.token), signing_key(api), algorithm="HS256", headers={"typ": "at+jwt"}
    )
    await assert_all_401(api, node, forged)


async def test_issued_node_tokens_are_typed(api: Api) -> None:
    node = await api.register()
    assert jwt.get_unverified_header(node.token) == {"alg": "HS256", "typ": "JWT"}
    assert claims_of(node.token)["iss"] == "edgesync"


async def test_enrollment_secret_over_72_bytes_is_401_not_500(api: Api) -> None:
    # bcrypt 5 raises ValueError for secrets over 72 bytes; the token id is real.
    token = await api.enrollment_token()
    token_id = token.split(".", 1)[0]
    for secret in ("x" * 73, "x" * 5000, "é" * 40, "a b"):
        response = await api.post(
            "/api/v1/nodes/register",
            json={"name": "edge", "enrollment_token": f"{token_id}.{secret}"},
        )
        await expect_error(response, 401, "INVALID_ENROLLMENT_TOKEN")
    await api.register(enrollment_token=token)  # the real token still works


# -- auth follows the matched route, never the raw path ----------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "/api/v1/nodes/{node}%2Fdownload?sig=1",
        "/api/v1/nodes/{node}%2Fdownload?sig=1&expires=1",
        "/api/v1/nodes/{node}%2Fsync%2Fdownload?sig=1",
        "/api/v1/functions/{function}%2Fdownload?sig=1",
        "/api/v1/functions/{function}%2fdownload?sig=1&expires=9999999999",
        "/api/v1/nodes/register%2F..%2F{node}",
        "/api/v1/openapi.json%2F..%2Fnodes",
    ],
)
async def test_encoded_slashes_never_skip_authentication(api: Api, wasm, template: str) -> None:
    node = await api.register()
    function = await api.upload_ok("hello", "1.0", wasm.module())
    path = template.format(node=node.id, function=function["id"])
    response = await api.get(URL(path, encoded=True))
    assert response.status in (401, 404), await response.text()
    await expect_error(
        response, response.status, "UNAUTHORIZED" if response.status == 401 else "NOT_FOUND"
    )


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {ADMIN_TOKEN}\u00e9",
        f"Bearer {ADMIN_TOKEN[:8]}\u2028{ADMIN_TOKEN[8:]}",
        "Bearer \u00ff" * 3,
        "Bearer a\tb",
    ],
)
async def test_authorization_header_with_odd_characters_is_401(api: Api, value: str) -> None:
    response = await api.get("/api/v1/nodes", headers={"Authorization": value})
    error = await expect_error(response, 401, "UNAUTHORIZED")
    assert ADMIN_TOKEN[:8] not in str(error)


async def test_head_requests_follow_their_get_routes_access(api: Api) -> None:
    # aiohttp answers HEAD through the GET route: the same rule must apply.
    response = await api.client.head("/api/v1/nodes")
    assert response.status == 401
    assert (await api.client.head("/api/v1/nodes", headers=ADMIN)).status == 200
    assert (await api.client.head("/healthz")).status == 200
