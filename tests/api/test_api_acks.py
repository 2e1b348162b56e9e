"""Acks move a node's state once, and only for its newest plan; node-driven load is bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api_support import ADMIN, Api, Node, expect_error


def state(*functions: dict[str, Any], schema: int = 0) -> dict[str, Any]:
    return {"schema_version": schema, "functions": list(functions)}


def failure(code: str = "MIGRATION_FAILED", message: str = "boom") -> dict[str, Any]:
    return {"code": code, "message": message, "details": {}, "retryable": False}


async def ack(api: Api, node: Node, sync_id: str, body_state: dict[str, Any], **extra: Any) -> Any:
    response = await api.ack(node, sync_id, body_state, **extra)
    text = await response.text()
    assert response.status == 200, text
    return json.loads(text)


async def test_a_different_ack_for_a_completed_sync_is_not_recorded(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    plan = await api.plan(node)
    assert (await ack(api, node, plan["sync_id"], plan["target"]))["recorded"] is True
    flipped = await ack(api, node, plan["sync_id"], state(), status="failed", error=failure())
    assert flipped["recorded"] is False
    assert flipped["sync"]["status"] == "success" and flipped["sync"]["ignored_acks"] == 1
    shown = await api.node(node)
    assert shown["functions"] == plan["target"]["functions"]
    # The byte-identical repeat of the first ack stays the documented idempotent success.
    assert (await ack(api, node, plan["sync_id"], plan["target"]))["recorded"] is True
    # Nothing moved: the node's next poll is a 304 for the ETag it holds.
    after = await api.plan(node)
    assert (await api.poll(node, after["etag"])).status == 304


async def test_a_late_ack_for_a_superseded_sync_does_not_regress_the_node(api: Api, wasm) -> None:
    await api.upload_ok("hello", "3.0", wasm.module(3))
    node = await api.register()
    older = await api.plan(node)
    await api.upload_ok("hello", "4.0", wasm.module(4))
    newer = await api.plan(node)
    assert newer["sync_id"] != older["sync_id"]
    assert (await ack(api, node, newer["sync_id"], newer["target"]))["recorded"] is True
    late = await ack(api, node, older["sync_id"], older["target"])
    assert late["recorded"] is False and late["sync"]["status"] == "failed"
    assert [f["version"] for f in (await api.node(node))["functions"]] == ["4.0"]


async def test_twenty_conflicting_concurrent_acks_make_one_transition(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    plan = await api.plan(node)
    fn = plan["target"]["functions"][0]
    # Twenty different acks (identical ones would be repeats, recorded: true each).
    bodies = [
        (state(fn, schema=index), {})
        if index % 2
        else (state(), {"status": "failed", "error": failure(message=f"try {index}")})
        for index in range(20)
    ]
    results = await asyncio.gather(
        *(ack(api, node, plan["sync_id"], body, **extra) for body, extra in bodies)
    )
    assert sum(result["recorded"] for result in results) == 1
    [record] = await api.history(node)
    assert record["ignored_acks"] == 19
    winner = bodies[[result["recorded"] for result in results].index(True)]
    expected = winner[0]["functions"]
    assert (await api.node(node))["functions"] == expected


async def test_an_ack_listing_too_many_functions_is_refused_before_the_database(
    api: Api, wasm
) -> None:
    await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    plan = await api.plan(node)
    fake = [{"name": f"f{i}", "version": "1.0", "sha256": "0" * 64} for i in range(22_000)]
    response = await api.ack(node, plan["sync_id"], state(*fake))
    error = await expect_error(response, 400, "VALIDATION_FAILED")
    assert error["details"]["field"] == "ack.state.functions"
    [record] = await api.history(node)
    assert record["status"] == "pending"  # nothing was recorded


async def test_stored_error_fields_are_truncated(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    plan = await api.plan(node)
    huge = failure(code="E" * 50_000, message="m" * 500_000)
    await ack(api, node, plan["sync_id"], state(), status="failed", error=huge)
    [record] = await api.history(node)
    assert len(record["error_message"]) <= 2000
    assert len(record.get("error_code") or "") <= 64


async def test_repeated_full_plans_reuse_one_record_then_are_rate_limited(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    path = f"/api/v1/nodes/{node.id}/sync?full=true"
    statuses: list[int] = []
    sync_ids: set[str] = set()
    retry_after = None
    for _ in range(50):
        response = await api.get(path, headers=node.headers)
        statuses.append(response.status)
        if response.status == 200:
            sync_ids.add((await response.json())["sync_id"])
        else:
            await expect_error(response, 429, "RATE_LIMITED")
            retry_after = response.headers["Retry-After"]
    assert statuses.count(200) >= 1 and 429 in statuses
    assert retry_after is not None and int(retry_after) >= 1
    assert len(sync_ids) == 1, "asking again for the same full plan opened new records"
    assert len(await api.history(node, limit=500)) == 1
    # Ordinary polls are not limited by it.
    assert (await api.plan(node))["sync_id"]


async def test_rate_limited_is_only_for_the_node_asking(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module(1))
    busy, quiet = await api.register(), await api.register()
    for _ in range(30):
        await api.get(f"/api/v1/nodes/{busy.id}/sync?full=true", headers=busy.headers)
    response = await api.get(f"/api/v1/nodes/{quiet.id}/sync?full=true", headers=quiet.headers)
    assert response.status == 200
    assert (await api.json("GET", f"/api/v1/nodes/{busy.id}", headers=ADMIN))["id"] == busy.id


async def test_a_heartbeat_with_too_many_function_counters_is_refused(api: Api) -> None:
    node = await api.register()
    path = f"/api/v1/nodes/{node.id}/heartbeat"
    counters = {f"f{i}": {"invocations": 1, "errors": 0} for i in range(22_000)}
    response = await api.post(path, json={"functions": counters}, headers=node.headers)
    error = await expect_error(response, 400, "VALIDATION_FAILED")
    assert error["details"]["field"] == "heartbeat.functions"
    few = {"hello": {"invocations": 3, "errors": 1}}
    assert (await api.post(path, json={"functions": few}, headers=node.headers)).status == 200
