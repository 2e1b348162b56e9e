"""Replicas: several control planes on one PostgreSQL database (the k3s layout).

Two apps share the database and the data dir (so the folder artifact store too):
whatever one replica writes, the other serves within the FleetCache's staleness
bound (a stamp is trusted for at most 1 s; appliance/fleet_cache.py). Tests pass
that bound by moving the other replica's cache clock on, never by sleeping.
"""

from __future__ import annotations

import pytest
from api_support import ADMIN, Api, expect_error
from yarl import URL

from appliance.fleet_cache import STAMP_TTL_SECONDS

pytestmark = pytest.mark.databases("postgresql")
PAST_THE_BOUND = STAMP_TTL_SECONDS + 0.001


async def replicas(make_api, make_database_url) -> tuple[Api, Api]:  # type: ignore[no-untyped-def]
    url = make_database_url()
    first: Api = await make_api(database_url=url)
    second: Api = await make_api(database_url=url, data_dir=first.config.data_dir)
    return first, second


def past_the_bound(*apis: Api) -> None:
    """Let these replicas' caches live through the staleness bound (their clock moves on)."""
    for api in apis:
        cache = api.services.cache
        earlier = cache._clock  # the injected monotonic clock
        cache._clock = lambda earlier=earlier: earlier() + PAST_THE_BOUND  # type: ignore[misc]


async def test_a_release_through_one_replica_reaches_nodes_polling_another(
    make_api, make_database_url, wasm
) -> None:
    first, second = await replicas(make_api, make_database_url)
    # Enrolled through one replica; its token (signed with the shared key) opens the other.
    node = await first.register()
    idle = await second.plan(node)
    assert idle["actions"] == []
    assert (await first.poll(node, idle["etag"])).status == 304

    # A release through the other replica: both stop answering 304 within the bound.
    await second.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY);")
    created = await second.upload_ok("hello", "1.0", wasm.module())
    past_the_bound(first)
    plan = await first.plan(node, idle["etag"])
    assert [action["type"] for action in plan["actions"]] == ["apply_schema", "deploy_function"]
    assert (await second.poll(node, plan["etag"])).status == 304

    # The signed URL of one replica is good on the other.
    url = URL(plan["actions"][1]["download_url"])
    download = await second.get(url.path_qs)
    assert download.status == 200 and len(await download.read()) == created["size_bytes"]

    # Acked through the first; the second shows the node's new state.
    await first.apply(node, plan)
    shown = await second.node(node)
    assert shown["current_schema_version"] == 1
    assert shown["functions"] == plan["target"]["functions"]
    past_the_bound(second)
    settled = await second.plan(node, plan["etag"])
    assert settled["actions"] == [] and settled["etag"] != plan["etag"]

    # A deletion through the second withdraws the version on the first.
    response = await second.delete(f"/api/v1/functions/{created['id']}", headers=ADMIN)
    assert response.status == 204
    past_the_bound(first)
    removal = await first.plan(node, settled["etag"])
    assert [action["type"] for action in removal["actions"]] == ["remove_function"]


async def test_a_token_rotated_on_one_replica_is_refused_by_the_other(
    make_api, make_database_url
) -> None:
    first, second = await replicas(make_api, make_database_url)
    node = await first.register()
    assert (await second.poll(node)).status == 200  # the stamp is cached now
    rotated = await first.json(
        "POST", f"/api/v1/nodes/{node.id}/token/rotate", json={}, headers=node.headers
    )
    past_the_bound(second)  # a rotation elsewhere is honoured within the stamp TTL
    response = await second.poll(node)
    await expect_error(response, 401, "UNAUTHORIZED")
    fresh = {"Authorization": f"Bearer {rotated['token']}"}
    assert (await second.get(f"/api/v1/nodes/{node.id}/sync", headers=fresh)).status == 200


async def test_schema_versions_are_append_only_across_replicas(make_api, make_database_url) -> None:
    first, second = await replicas(make_api, make_database_url)
    await first.add_schema(1, "CREATE TABLE a (x INTEGER);")
    response = await second.post(
        "/api/v1/schemas", json={"version": 1, "up_sql": "CREATE TABLE b (y INTEGER);"},
        headers=ADMIN,
    )  # fmt: skip
    await expect_error(response, 409, "SCHEMA_VERSION_CONFLICT")
    await second.add_schema(2, "CREATE TABLE b (y INTEGER);")
    listed = await first.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert [m["version"] for m in listed["migrations"]] == [1, 2]
