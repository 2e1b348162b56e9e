"""Rollouts through the API, with the engine's rounds run by the test (no waiting)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from api_support import ADMIN, Api, Node, expect_error

from appliance.rollouts.engine import ROLLOUTS, RolloutEngine
from edgesync.protocol import utcnow


def engine(api: Api) -> RolloutEngine:
    return api.client.app[ROLLOUTS]


async def releases(api: Api) -> list[dict[str, Any]]:
    return (await api.json("GET", "/api/v1/releases", headers=ADMIN))["releases"]  # type: ignore[no-any-return]


async def fleet_on_v1(api: Api, wasm: Any, count: int, **labels: Any) -> list[Node]:
    """``count`` nodes running hello 1.0, then auto-release off and release hello 2.0."""
    nodes = [await api.register(**labels) for _ in range(count)]
    await api.upload_ok("hello", "1.0", wasm.module(1))
    for node in nodes:
        await api.apply(node, await api.plan(node))
    await api.json("PUT", "/api/v1/fleet", json={"auto_release": False}, headers=ADMIN)
    await api.upload_ok("hello", "2.0", wasm.module(2))
    return nodes


async def v2(api: Api) -> dict[str, Any]:
    return await api.json(  # type: ignore[no-any-return]
        "POST",
        "/api/v1/releases",
        201,
        json={"schema_version": 0, "functions": [{"name": "hello", "version": "2.0"}]},
        headers=ADMIN,
    )


async def start(api: Api, status: int = 201, **body: Any) -> Any:
    return await api.json("POST", "/api/v1/rollouts", status, json=body, headers=ADMIN)


def version_of(plan: dict[str, Any]) -> list[str]:
    return [f["version"] for f in plan["target"]["functions"]]


async def step(api: Api, rollout: dict[str, Any]) -> dict[str, Any]:
    await engine(api).evaluate(rollout["id"])
    return await api.json("GET", f"/api/v1/rollouts/{rollout['id']}", headers=ADMIN)  # type: ignore[no-any-return]


async def test_waves_advance_as_nodes_ack_and_the_rollout_completes(api: Api, wasm) -> None:
    nodes = await fleet_on_v1(api, wasm, 4)
    release = await v2(api)
    rollout = await start(api, release_id=release["id"], waves=[1, "50%", "100%"])
    assert [w["size"] for w in rollout["waves"]] == [1, 2, 4]
    assert rollout["state"] == "running" and rollout["waves"][0]["state"] == "running"
    ordered = sorted(nodes, key=lambda n: n.id)
    assert version_of(await api.plan(ordered[1])) == ["1.0"]  # wave 1 has not started
    for wave, members in ((0, ordered[:1]), (1, ordered[1:2]), (2, ordered[2:])):
        for node in members:
            plan = await api.plan(node)
            assert version_of(plan) == ["2.0"]
            await api.apply(node, plan)
        rollout = await step(api, rollout)
        assert rollout["waves"][wave]["state"] == "done"
        assert rollout["waves"][wave]["nodes"]["applied"] == len(members)
    assert rollout["state"] == "completed" and rollout["failures"] == 0
    shown = await api.node(ordered[0])
    assert shown["release_id"] == release["id"]


async def test_a_failed_ack_rolls_the_canary_back(api: Api, wasm) -> None:
    nodes = await fleet_on_v1(api, wasm, 3)
    previous = (await releases(api))[0]
    release = await v2(api)
    rollout = await start(api, release_id=release["id"], waves=[1, "100%"])
    canary = min(nodes, key=lambda n: n.id)
    plan = await api.plan(canary)
    error = {"code": "MIGRATION_FAILED", "message": "x", "details": {}, "retryable": False}
    response = await api.ack(canary, plan["sync_id"], plan["target"], "failed", error)
    assert response.status == 200
    rollout = await step(api, rollout)
    assert rollout["state"] == "rolled_back" and rollout["failures"] == 1
    assert version_of(await api.plan(canary)) == ["1.0"]
    assert (await api.node(canary))["release_id"] == previous["id"]
    others = [n for n in nodes if n is not canary]
    for node in others:
        assert version_of(await api.plan(node)) == ["1.0"]


async def test_pause_resume_abort_and_state_conflicts(api: Api, wasm) -> None:
    nodes = await fleet_on_v1(api, wasm, 2)
    release = await v2(api)
    rollout = await start(api, release_id=release["id"], waves=[1, "100%"], auto_rollback=False)
    base = f"/api/v1/rollouts/{rollout['id']}"
    canary = min(nodes, key=lambda n: n.id)
    plan = await api.plan(canary)
    error = {"code": "PLAN_REJECTED", "message": "x", "details": {}, "retryable": False}
    await api.ack(canary, plan["sync_id"], plan["target"], "failed", error)
    rollout = await step(api, rollout)
    assert rollout["state"] == "paused"  # no auto-rollback: it stops and waits
    resumed = await api.json("POST", f"{base}/resume", json={}, headers=ADMIN)
    assert resumed["state"] == "running"
    rollout = await step(api, resumed)  # the accepted failure does not pause it again
    assert rollout["state"] == "running"
    paused = await api.json("POST", f"{base}/pause", json={}, headers=ADMIN)
    assert paused["state"] == "paused"
    await expect_error(
        await api.client.post(f"{base}/pause", json={}, headers=ADMIN),
        409,
        "ROLLOUT_STATE_CONFLICT",
    )
    aborted = await api.json("POST", f"{base}/abort", json={}, headers=ADMIN)
    assert aborted["state"] == "aborted"
    await expect_error(
        await api.client.post(f"{base}/resume", json={}, headers=ADMIN),
        409,
        "ROLLOUT_STATE_CONFLICT",
    )
    rolled = await api.json("POST", f"{base}/rollback", json={}, headers=ADMIN)
    assert rolled["state"] == "rolled_back"
    assert version_of(await api.plan(canary)) == ["1.0"]
    listed = await api.json(
        "GET", "/api/v1/rollouts", params={"state": "rolled_back"}, headers=ADMIN
    )
    assert [r["id"] for r in listed["rollouts"]] == [rollout["id"]]
    await expect_error(
        await api.client.post("/api/v1/rollouts/nope/pause", json={}, headers=ADMIN),
        404,
        "NOT_FOUND",
    )


async def test_selector_leaves_other_nodes_untouched(api: Api, wasm) -> None:
    eu = [await api.register(region="eu") for _ in range(2)]
    us = await api.register(region="us")
    await api.upload_ok("hello", "1.0", wasm.module(1))
    await api.json("PUT", "/api/v1/fleet", json={"auto_release": False}, headers=ADMIN)
    await api.upload_ok("hello", "2.0", wasm.module(2))
    release = await v2(api)
    rollout = await start(api, release_id=release["id"], selector={"region": "eu"})
    assert rollout["waves"][0]["size"] == 2
    for node in eu:
        assert version_of(await api.plan(node)) == ["2.0"]
    assert version_of(await api.plan(us)) == ["1.0"]


async def test_node_in_rollout_and_dry_run(api: Api, wasm) -> None:
    nodes = await fleet_on_v1(api, wasm, 3)
    release = await v2(api)
    response = await api.client.post(
        "/api/v1/rollouts",
        params={"dry_run": "true"},
        json={"release_id": release["id"], "waves": [1, "100%"]},
        headers=ADMIN,
    )
    assert response.status == 200, await response.text()
    dry = await response.json()
    ids = sorted(n.id for n in nodes)
    assert [w["node_ids"] for w in dry["waves"]] == [ids[:1], ids[1:]]
    assert dry["changes"][ids[0]] == [
        {"type": "deploy_function", "name": "hello", "version": "2.0"},
        {"type": "remove_function", "name": "hello", "version": "1.0"},
    ]
    assert (await api.json("GET", "/api/v1/rollouts", headers=ADMIN))["rollouts"] == []
    await start(api, release_id=release["id"], selector={"node_ids": ids[:2]})
    response = await api.client.post(
        "/api/v1/rollouts", json={"release_id": release["id"]}, headers=ADMIN
    )
    error = await expect_error(response, 409, "NODE_IN_ROLLOUT")
    assert error["details"]["node_ids"] == ids[:2]
    response = await api.client.put(
        f"/api/v1/nodes/{ids[0]}/pin", json={"release_id": release["id"]}, headers=ADMIN
    )
    await expect_error(response, 409, "NODE_IN_ROLLOUT")
    response = await api.client.post(
        "/api/v1/rollouts", json={"release_id": release["id"], "waves": [1]}, headers=ADMIN
    )
    await expect_error(response, 400, "VALIDATION_FAILED")


async def test_irreversible_rollout_is_refused_unless_allowed(api: Api, wasm) -> None:
    await fleet_on_v1(api, wasm, 1)
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")  # no down_sql
    made = await api.json(
        "POST",
        "/api/v1/releases",
        201,
        json={"schema_version": 1, "functions": [{"name": "hello", "version": "2.0"}]},
        headers=ADMIN,
    )
    response = await api.client.post(
        "/api/v1/rollouts", json={"release_id": made["id"]}, headers=ADMIN
    )
    error = await expect_error(response, 409, "IRREVERSIBLE_ROLLOUT")
    assert error["details"]["versions"] == [1]
    await start(api, release_id=made["id"], allow_irreversible=True)


async def test_function_error_rate_gate_rolls_back_after_observation(api: Api, wasm) -> None:
    nodes = await fleet_on_v1(api, wasm, 2)
    release = await v2(api)
    rollout = await start(
        api,
        release_id=release["id"],
        waves=[1, "100%"],
        observe_seconds=60,
        max_function_error_rate=0.05,
    )
    canary = min(nodes, key=lambda n: n.id)
    await api.apply(canary, await api.plan(canary))
    rollout = await step(api, rollout)
    assert rollout["state"] == "running" and rollout["waves"][0]["state"] == "running"  # observing
    beat = {"functions": {"hello": {"invocations": 10, "errors": 3}}}
    response = await api.client.post(
        f"/api/v1/nodes/{canary.id}/heartbeat", json=beat, headers=canary.headers
    )
    assert response.status == 200
    rollout = await step(api, rollout)
    assert rollout["state"] == "rolled_back"
    assert version_of(await api.plan(canary)) == ["1.0"]


async def test_observation_window_passes_then_the_next_wave_starts(api: Api, wasm) -> None:
    nodes = await fleet_on_v1(api, wasm, 2)
    release = await v2(api)
    rollout = await start(api, release_id=release["id"], waves=[1, "100%"], observe_seconds=60)
    canary = min(nodes, key=lambda n: n.id)
    await api.apply(canary, await api.plan(canary))
    rollout = await step(api, rollout)
    assert rollout["waves"][1]["state"] == "pending"
    engine(api).clock = lambda: utcnow() + timedelta(seconds=120)
    rollout = await step(api, rollout)
    assert rollout["waves"][0]["state"] == "done" and rollout["waves"][1]["state"] == "running"


async def test_wave_timeout_counts_silent_nodes_as_failed(api: Api, wasm) -> None:
    await fleet_on_v1(api, wasm, 2)
    release = await v2(api)
    rollout = await start(
        api, release_id=release["id"], wave_timeout_seconds=10, max_failures="50%"
    )
    engine(api).clock = lambda: utcnow() + timedelta(seconds=30)
    rollout = await step(api, rollout)
    assert rollout["failures"] == 2 and rollout["state"] == "rolled_back"


async def test_auto_release_skips_nodes_in_a_rollout(api: Api, wasm) -> None:
    nodes = [await api.register() for _ in range(2)]
    await api.upload_ok("hello", "1.0", wasm.module(1))
    first = (await releases(api))[0]
    inside = min(nodes, key=lambda n: n.id)
    await start(api, release_id=first["id"], selector={"node_ids": [inside.id]})
    await api.upload_ok("hello", "2.0", wasm.module(2))  # auto-release: the others follow
    outside = max(nodes, key=lambda n: n.id)
    assert version_of(await api.plan(outside)) == ["2.0"]
    assert version_of(await api.plan(inside)) == ["1.0"]


async def test_heartbeat_counters_are_validated(api: Api) -> None:
    node = await api.register()
    beat = {"functions": {"hello": {"invocations": -1, "errors": 0}}}
    response = await api.client.post(
        f"/api/v1/nodes/{node.id}/heartbeat", json=beat, headers=node.headers
    )
    await expect_error(response, 400, "VALIDATION_FAILED")


async def test_metrics_count_rollouts_by_state_and_nodes_per_release(api: Api, wasm) -> None:
    await fleet_on_v1(api, wasm, 2)
    release = await v2(api)
    await start(api, release_id=release["id"], waves=[1, "100%"])
    text = await (await api.client.get("/metrics")).text()
    assert 'edgesync_rollouts{state="running"} 1.0' in text
    assert f'edgesync_nodes_per_release{{release="{release["number"]}"}} 1.0' in text
    assert 'edgesync_nodes_per_release{release="1"} 1.0' in text
