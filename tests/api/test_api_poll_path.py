"""The poll path at fleet scale: liveness on the poll, the fast path, shared renderings.

A converged node's poll carries its liveness (agent version, state ETag) and
is answered from memory; anything that is not exactly that poll takes the full
middleware chain. Liveness is written in batches (the node pages flush first).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from api_support import Api, ApiFactory, Node, expect_error

from edgesync.protocol import (
    AGENT_VERSION_HEADER,
    LIVENESS_RECORDED,
    LIVENESS_RECORDED_HEADER,
    STATE_ETAG_HEADER,
)


def fast_polls(api: Api) -> float:
    return api.services.metrics.registry.get_sample_value("edgesync_polls_fast_path_total") or 0.0


def not_modified(api: Api) -> float:
    sample = api.services.metrics.registry.get_sample_value(
        "edgesync_plans_served_total", {"kind": "not_modified"}
    )
    return sample or 0.0


async def converged(api: Api, node: Node) -> str:
    """Poll once for the (empty) plan; return the ETag a converged node polls with."""
    return str((await api.plan(node))["etag"])


def poll(api: Api, node: Node, etag: str, **headers: str) -> Any:
    return api.client.get(
        f"/api/v1/nodes/{node.id}/sync",
        headers={**node.headers, "If-None-Match": etag, **headers},
    )


async def test_the_poll_records_liveness_and_says_so(api: Api) -> None:
    node = await api.register()
    etag = await converged(api, node)
    facts = {AGENT_VERSION_HEADER: "9.8.7", STATE_ETAG_HEADER: '"abc"'}
    response = await poll(api, node, etag, **facts)
    assert response.status == 304
    assert response.headers[LIVENESS_RECORDED_HEADER] == LIVENESS_RECORDED
    record = await api.node(node)  # flushes this replica's pending liveness first
    assert record["agent_version"] == "9.8.7" and record["status"] == "online"
    assert (await api.services.store.get_node(node.id)).last_heartbeat_at == (
        record["last_heartbeat_at"]
    )


@pytest.mark.parametrize(
    "header, value",
    [
        (AGENT_VERSION_HEADER, "x" * 101),
        (STATE_ETAG_HEADER, "has space"),
        (AGENT_VERSION_HEADER, "é"),
    ],
)
async def test_malformed_liveness_headers_are_refused_never_echoed(
    api: Api, header: str, value: str
) -> None:
    node = await api.register()
    etag = await converged(api, node)
    for _ in range(2):  # the fast path (second poll) must fall through to the same answer
        response = await poll(api, node, etag, **{header: value})
        body = await expect_error(response, 400, "VALIDATION_FAILED")
        assert value not in str(body)


async def test_a_converged_poll_takes_the_fast_path_and_is_not_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    node = await api.register()
    etag = await converged(api, node)
    assert (await poll(api, node, etag)).status == 304  # fills the stamp and plan caches
    before, counted = fast_polls(api), not_modified(api)
    with caplog.at_level(logging.INFO, logger="edgesync.access"):
        for _ in range(3):
            response = await poll(api, node, etag, **{AGENT_VERSION_HEADER: "1.0"})
            assert response.status == 304 and response.headers["ETag"] == etag
    assert fast_polls(api) == before + 3
    assert not_modified(api) == counted + 3  # still counted as plans served
    assert not [r for r in caplog.records if r.name == "edgesync.access"]
    await api.node(node)
    assert (await api.services.store.get_node(node.id)).agent_version == "1.0"


async def test_a_full_chain_304_poll_is_counted_not_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    node = await api.register()
    etag = await converged(api, node)
    with caplog.at_level(logging.INFO, logger="edgesync.access"):
        assert (await poll(api, node, f'{etag}, "other"')).status == 304  # a list: slow path
        assert (await api.client.get("/healthz")).status == 200
    routes = [r.getMessage() for r in caplog.records if r.name == "edgesync.access"]
    assert len(routes) == 1 and "/healthz" in routes[0]


async def test_what_is_not_exactly_a_converged_poll_falls_through(api: Api) -> None:
    node = await api.register()
    etag = await converged(api, node)
    await poll(api, node, etag)
    before = fast_polls(api)
    assert (await poll(api, node, '"not-the-etag"')).status == 200  # the plan again
    other = await api.register()
    wrong_node = api.client.get(
        f"/api/v1/nodes/{other.id}/sync", headers={**node.headers, "If-None-Match": etag}
    )
    await expect_error(await wrong_node, 403, "FORBIDDEN")
    query = api.client.get(
        f"/api/v1/nodes/{node.id}/sync?x=%00", headers={**node.headers, "If-None-Match": etag}
    )
    await expect_error(await query, 400, "MALFORMED_REQUEST")
    assert fast_polls(api) == before


async def test_a_rotated_token_is_refused_on_the_next_poll(api: Api) -> None:
    node = await api.register()
    etag = await converged(api, node)
    assert (await poll(api, node, etag)).status == 304  # cached: the fast path knows it
    rotated = await api.json(
        "POST", f"/api/v1/nodes/{node.id}/token/rotate", headers=node.headers, json={}
    )
    await expect_error(await poll(api, node, etag), 401, "UNAUTHORIZED")
    fresh = Node(node.id, rotated["token"], node.body)
    assert (await poll(api, fresh, etag)).status == 304


async def test_liveness_pending_at_shutdown_is_written(make_api: ApiFactory) -> None:
    api = await make_api()
    node = await api.register()
    etag = await converged(api, node)
    await poll(api, node, etag, **{AGENT_VERSION_HEADER: "at-shutdown"})
    store = api.services.store
    assert (await store.get_node(node.id)).agent_version is None  # still only in memory
    liveness = api.services.liveness
    await liveness.close()  # what the app's cleanup does before closing the database
    assert (await store.get_node(node.id)).agent_version == "at-shutdown"


async def test_nodes_on_one_release_share_a_rendering(api: Api, wasm: Any) -> None:
    await api.upload_ok("hello", "1.0.0", wasm.module(1))
    nodes = [await api.register() for _ in range(3)]
    plans = [await api.plan(node) for node in nodes]
    assert len({plan["sync_id"] for plan in plans}) == 3  # a record each
    shared = [{k: v for k, v in plan.items() if k not in ("sync_id", "etag")} for plan in plans]
    assert shared[0] == shared[1] == shared[2]
    assert api.services.cache.sizes()["renderings"] == 1


async def test_direct_delivery_through_a_public_artifact_url(
    make_api: ApiFactory, wasm: Any
) -> None:
    api = await make_api(artifact_public_url="https://cdn.example.net/modules/")
    created = await api.upload_ok("hello", "1.0.0", wasm.module(1))
    plan = await api.plan(await api.register())
    (deploy,) = plan["actions"]
    assert deploy["download_url"].startswith("https://cdn.example.net/modules/")
    assert "//" not in deploy["download_url"].removeprefix("https://")
    assert deploy["sha256"] == created["sha256"]  # what the node checks what it fetched against
