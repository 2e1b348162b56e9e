"""Plans, ETags, acks and history: the sync loop as a node sees it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from api_support import ADMIN, Api, Node, expect_error, sha256
from yarl import URL

from edgesync.protocol import parse_time, utcnow


def kinds(plan: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The plan's actions in order, reduced to what identifies each."""
    out: list[tuple[Any, ...]] = []
    for action in plan["actions"]:
        if action["type"] == "apply_schema":
            out.append(("apply_schema", action["version"]))
        else:
            out.append((action["type"], action["name"], action["version"]))
    return out


def target_functions(plan: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["name"], f["version"]) for f in plan["target"]["functions"]}


async def syncs_total(api: Api, status: str) -> float:
    return (
        api.services.metrics.registry.get_sample_value("edgesync_syncs_total", {"status": status})
        or 0.0
    )


# -- plans and ETags ---------------------------------------------------------------------


async def test_new_node_with_nothing_to_do(api: Api) -> None:
    node = await api.register()
    response = await api.poll(node)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    plan = await response.json()
    assert plan == {
        "sync_id": None,
        "etag": response.headers["ETag"],
        "target": {"schema_version": 0, "functions": []},
        "actions": [],
    }
    again = await api.poll(node, plan["etag"])
    assert again.status == 304
    assert again.headers["ETag"] == plan["etag"]
    assert await again.read() == b""
    assert await api.history(node) == []  # an empty plan opens no sync
    assert (await api.node(node))["status"] == "online"


async def test_full_plan_is_schema_ascending_then_deploys(api: Api, wasm) -> None:
    await api.add_schema(1, "CREATE TABLE users (id INTEGER PRIMARY KEY);")
    await api.add_schema(2, "ALTER TABLE users ADD COLUMN name TEXT;", description="names")
    zeta = await api.upload_ok("zeta", "1.0", wasm.module(1))
    alpha = await api.upload_ok("alpha", "2.0", wasm.module(2))
    node = await api.register()
    plan = await api.plan(node)
    assert uuid.UUID(plan["sync_id"])
    assert kinds(plan) == [
        ("apply_schema", 1),
        ("apply_schema", 2),
        ("deploy_function", "alpha", "2.0"),
        ("deploy_function", "zeta", "1.0"),
    ]
    schema2 = plan["actions"][1]
    assert schema2 == {
        "type": "apply_schema",
        "version": 2,
        "description": "names",
        "up_sql": "ALTER TABLE users ADD COLUMN name TEXT;",
    }
    deploy = plan["actions"][2]
    assert set(deploy) == {
        "type",
        "function_id",
        "name",
        "version",
        "sha256",
        "size_bytes",
        "download_url",
        "url_expires_at",
    }
    assert (deploy["function_id"], deploy["sha256"], deploy["size_bytes"]) == (
        alpha["id"],
        alpha["sha256"],
        alpha["size_bytes"],
    )
    url = URL(deploy["download_url"])
    assert url.is_absolute() and url.path == f"/api/v1/functions/{alpha['id']}/download"
    expires_in = parse_time(deploy["url_expires_at"]) - utcnow()
    assert timedelta(minutes=14) < expires_in <= timedelta(minutes=15)
    assert int(url.query["expires"]) == int(parse_time(deploy["url_expires_at"]).timestamp())
    assert plan["target"] == {
        "schema_version": 2,
        "functions": sorted(
            [
                {"name": f["name"], "version": f["version"], "sha256": f["sha256"]}
                for f in (alpha, zeta)
            ],
            key=lambda f: f["name"],
        ),
    }
    [record] = await api.history(node)
    assert record["id"] == plan["sync_id"]
    assert (record["sync_type"], record["status"]) == ("full", "pending")
    assert (record["functions_added"], record["functions_removed"], record["schemas_applied"]) == (
        2,
        0,
        2,
    )
    assert (await api.node(node))["status"] == "syncing"


async def test_download_urls_use_the_public_url_and_ttl(make_api, wasm) -> None:
    api: Api = await make_api(public_url="https://cp.example.com/", url_ttl_seconds=60)
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    deploy = (await api.plan(node))["actions"][0]
    assert deploy["download_url"].startswith("https://cp.example.com/api/v1/functions/")
    expires_in = parse_time(deploy["url_expires_at"]) - utcnow()
    assert timedelta(seconds=50) < expires_in <= timedelta(seconds=60)


async def test_same_plan_until_something_changes(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    first = await api.plan(node)
    second = await api.plan(node)
    assert second["sync_id"] == first["sync_id"] and second["etag"] == first["etag"]
    assert (await api.poll(node, first["etag"])).status == 304
    assert (await api.poll(node, '"something-else"')).status == 200
    assert len(await api.history(node)) == 1


async def test_concurrent_polls_open_one_sync(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    plans = await asyncio.gather(*(api.plan(node) for _ in range(6)))
    assert len({p["sync_id"] for p in plans}) == 1
    assert len(await api.history(node)) == 1


async def test_plan_cache_is_never_stale(api: Api, wasm) -> None:
    node = await api.register()
    empty = await api.plan(node)
    assert (await api.poll(node, empty["etag"])).status == 304

    # A new function: the old ETag must not get a 304.
    v1 = await api.upload_ok("hello", "1.0", wasm.module(1))
    with_v1 = await api.plan(node, empty["etag"])
    assert with_v1["etag"] != empty["etag"]
    assert kinds(with_v1) == [("deploy_function", "hello", "1.0")]
    assert (await api.poll(node, with_v1["etag"])).status == 304

    # A new version of it.
    await api.upload_ok("hello", "2.0", wasm.module(2))
    with_v2 = await api.plan(node, with_v1["etag"])
    assert kinds(with_v2) == [("deploy_function", "hello", "2.0")]
    assert (await api.poll(node, with_v2["etag"])).status == 304

    # A new schema.
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    with_schema = await api.plan(node, with_v2["etag"])
    assert kinds(with_schema) == [("apply_schema", 1), ("deploy_function", "hello", "2.0")]
    assert (await api.poll(node, with_schema["etag"])).status == 304

    # A deleted version: back to v1.
    v2_id = with_v2["actions"][0]["function_id"]
    assert (await api.delete(f"/api/v1/functions/{v2_id}", headers=ADMIN)).status == 204
    after_delete = await api.plan(node, with_schema["etag"])
    assert kinds(after_delete) == [("apply_schema", 1), ("deploy_function", "hello", "1.0")]
    assert after_delete["actions"][1]["function_id"] == v1["id"]

    # Every plan was a new sync; the older ones were superseded.
    etags = [p["etag"] for p in (empty, with_v1, with_v2, with_schema, after_delete)]
    assert len(set(etags)) == len(etags)
    history = await api.history(node)
    assert [r["status"] for r in history] == ["pending", "failed", "failed", "failed"]
    assert history[0]["id"] == after_delete["sync_id"]


async def test_changes_reach_nodes_that_polled_with_a_cached_plan(api: Api, wasm) -> None:
    """Many nodes, each with a cached plan: one upload changes all of their plans."""
    nodes = [await api.register() for _ in range(3)]
    etags = {n.id: (await api.plan(n))["etag"] for n in nodes}
    await api.upload_ok("hello", "1.0", wasm.module())
    for node in nodes:
        plan = await api.plan(node, etags[node.id])
        assert kinds(plan) == [("deploy_function", "hello", "1.0")]


# -- acks ----------------------------------------------------------------------------------


async def test_success_ack_moves_the_node_to_its_target(api: Api, wasm) -> None:
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    v1 = await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    plan = await api.plan(node)
    answer = await api.apply(node, plan)
    assert answer["recorded"] is True

    shown = await api.node(node)
    assert shown["status"] == "online"
    assert shown["current_schema_version"] == 1
    assert shown["functions"] == [{"name": "hello", "version": "1.0", "sha256": v1["sha256"]}]
    assert shown["last_sync_at"] is not None

    [record] = await api.history(node)
    assert set(record) >= {
        "id",
        "node_id",
        "sync_type",
        "status",
        "started_at",
        "completed_at",
        "error_message",
        "functions_added",
        "functions_removed",
        "schemas_applied",
    }
    assert (record["status"], record["sync_type"], record["node_id"]) == (
        "success",
        "full",
        node.id,
    )
    assert record["completed_at"] >= record["started_at"]
    assert record["error_message"] is None
    assert (record["functions_added"], record["schemas_applied"]) == (1, 1)

    # In its target state, the node gets an empty plan with a new ETag.
    done = await api.plan(node, plan["etag"])
    assert done["actions"] == [] and done["sync_id"] is None
    assert done["etag"] != plan["etag"]
    assert (await api.poll(node, done["etag"])).status == 304

    # A new version is an incremental sync: deploy v2, then remove v1.
    await api.upload_ok("hello", "2.0", wasm.module(2))
    upgrade = await api.plan(node, done["etag"])
    assert kinds(upgrade) == [
        ("deploy_function", "hello", "2.0"),
        ("remove_function", "hello", "1.0"),
    ]
    assert upgrade["actions"][1] == {"type": "remove_function", "name": "hello", "version": "1.0"}
    assert (await api.history(node))[0]["sync_type"] == "incremental"


async def test_same_ack_twice_records_one_result(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    plan = await api.plan(node)
    first = await api.apply(node, plan)
    after_first = await api.plan(node)
    second = await api.apply(node, plan)
    assert first["recorded"] is True and second["recorded"] is True
    [record] = await api.history(node)
    assert record["status"] == "success"
    assert record == first["sync"] == second["sync"]
    assert await syncs_total(api, "success") == 1
    # The node's state revision did not move: the plan is still the same.
    assert (await api.poll(node, after_first["etag"])).status == 304


async def test_failed_ack_records_the_error(api: Api, wasm) -> None:
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    plan = await api.plan(node)
    error = {
        "code": "MIGRATION_FAILED",
        "message": "table t already exists",
        "details": {"version": 1},
        "retryable": False,
    }
    rolled_back = {"schema_version": 0, "functions": []}
    response = await api.ack(node, plan["sync_id"], rolled_back, status="failed", error=error)
    assert response.status == 200
    assert (await response.json())["recorded"] is True
    [record] = await api.history(node)
    assert record["id"] == plan["sync_id"]
    assert record["status"] == "failed"
    assert record["error_code"] == "MIGRATION_FAILED"
    assert record["error_message"] == "table t already exists"
    assert record["completed_at"] is not None
    assert (record["functions_added"], record["functions_removed"], record["schemas_applied"]) == (
        0,
        0,
        0,
    )
    assert await syncs_total(api, "failed") == 1
    shown = await api.node(node)
    assert shown["last_sync_at"] is None
    assert shown["status"] == "online"
    # Same failed ack again: still one record.
    again = await api.ack(node, plan["sync_id"], rolled_back, status="failed", error=error)
    assert again.status == 200
    assert len(await api.history(node)) == 1
    assert await syncs_total(api, "failed") == 1
    # The node is still behind its target, so the next poll is a new attempt.
    retry = await api.plan(node, plan["etag"])
    assert retry["sync_id"] != plan["sync_id"]
    assert kinds(retry) == kinds(plan)


async def test_failed_ack_keeps_the_rolled_back_state(api: Api, wasm) -> None:
    v1 = await api.upload_ok("hello", "1.0", wasm.module(1))
    node = await api.register()
    await api.apply(node, await api.plan(node))
    await api.upload_ok("hello", "2.0", wasm.module(2))
    plan = await api.plan(node)
    still_v1 = {
        "schema_version": 0,
        "functions": [{"name": "hello", "version": "1.0", "sha256": v1["sha256"]}],
    }
    error = {"code": "TRAP", "message": "unreachable", "details": {}, "retryable": True}
    response = await api.ack(node, plan["sync_id"], still_v1, status="failed", error=error)
    assert response.status == 200
    assert (await api.node(node))["functions"] == still_v1["functions"]
    assert kinds(await api.plan(node)) == kinds(plan)


async def test_ack_of_unknown_or_foreign_sync_is_404(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module())
    mine = await api.register()
    theirs = await api.register()
    their_plan = await api.plan(theirs)
    state = {"schema_version": 0, "functions": []}
    for sync_id in (str(uuid.uuid4()), their_plan["sync_id"]):
        response = await api.ack(mine, sync_id, state)
        await expect_error(response, 404, "NOT_FOUND")
    assert [r["status"] for r in await api.history(theirs)] == ["pending"]


async def test_history_is_newest_first_with_a_limit(api: Api, wasm) -> None:
    node = await api.register()
    sync_ids = []
    for index in range(4):
        await api.upload_ok(f"fn{index}", "1.0", wasm.module(index))
        plan = await api.plan(node)
        sync_ids.append(plan["sync_id"])
        await api.apply(node, plan)
    history = await api.history(node)
    assert [r["id"] for r in history] == sync_ids[::-1]
    assert [r["sync_type"] for r in history] == ["incremental"] * 3 + ["full"]
    limited = await api.history(node, limit=2)
    assert [r["id"] for r in limited] == sync_ids[::-1][:2]


# -- deleting versions ---------------------------------------------------------------------


async def test_deleting_versions_rolls_nodes_back_then_removes(api: Api, wasm) -> None:
    v1 = await api.upload_ok("hello", "1.0", wasm.module(1))
    v2 = await api.upload_ok("hello", "2.0", wasm.module(2))
    keep = await api.upload_ok("keep", "1.0", wasm.module(3))
    node = await api.register()
    plan = await api.plan(node)
    assert target_functions(plan) == {("hello", "2.0"), ("keep", "1.0")}
    await api.apply(node, plan)

    await api.delete(f"/api/v1/functions/{v2['id']}", headers=ADMIN)
    back = await api.plan(node)
    assert kinds(back) == [
        ("deploy_function", "hello", "1.0"),
        ("remove_function", "hello", "2.0"),
    ]
    assert back["actions"][0]["sha256"] == v1["sha256"]
    assert target_functions(back) == {("hello", "1.0"), ("keep", "1.0")}
    await api.apply(node, back)

    await api.delete(f"/api/v1/functions/{v1['id']}", headers=ADMIN)
    gone = await api.plan(node)
    assert kinds(gone) == [("remove_function", "hello", "1.0")]
    assert gone["target"]["functions"] == [
        {"name": "keep", "version": "1.0", "sha256": keep["sha256"]}
    ]
    await api.apply(node, gone)
    assert (await api.node(node))["functions"] == gone["target"]["functions"]
    assert (await api.plan(node))["actions"] == []


# -- node status and listing -----------------------------------------------------------------


async def test_node_object_and_heartbeat(api: Api) -> None:
    node = await api.register("edge-1", region="eu", labels={"rack": "7"})
    shown = await api.node(node)
    assert set(shown) >= {
        "id",
        "name",
        "region",
        "labels",
        "status",
        "current_schema_version",
        "functions",
        "last_heartbeat_at",
        "last_sync_at",
        "created_at",
    }
    assert (shown["id"], shown["name"], shown["region"], shown["labels"]) == (
        node.id,
        "edge-1",
        "eu",
        {"rack": "7"},
    )
    assert (shown["status"], shown["current_schema_version"], shown["functions"]) == (
        "online",
        0,
        [],
    )
    beat = await api.json(
        "POST",
        f"/api/v1/nodes/{node.id}/heartbeat",
        json={"agent_version": "0.9.1", "state_etag": '"x"'},
        headers=node.headers,
    )
    assert beat["status"] == "online"
    assert abs((parse_time(beat["server_time"]) - utcnow()).total_seconds()) < 60
    after = await api.node(node)
    assert after["last_heartbeat_at"] == beat["server_time"]
    assert after["agent_version"] == "0.9.1"


async def test_node_status_online_syncing_offline(api: Api, wasm) -> None:
    await api.register("idle")
    busy = await api.register("busy")
    quiet = await api.register("quiet")
    await api.upload_ok("hello", "1.0", wasm.module())
    plan = await api.plan(busy)
    # The last heartbeat 3 poll intervals + 1 s ago: instead of sleeping, record
    # it with a past clock.
    ago = timedelta(seconds=3 * api.config.poll_interval_seconds + 1)
    await api.services.store.heartbeat(quiet.id, utcnow() - ago, None, None)

    async def statuses(**query: str) -> dict[str, str]:
        body = await api.json("GET", "/api/v1/nodes", params=query, headers=ADMIN)
        return {n["name"]: n["status"] for n in body["nodes"]}

    assert await statuses() == {"idle": "online", "busy": "syncing", "quiet": "offline"}
    assert await statuses(status="online") == {"idle": "online"}
    assert await statuses(status="syncing") == {"busy": "syncing"}
    assert await statuses(status="offline") == {"quiet": "offline"}
    assert (await api.node(quiet))["status"] == "offline"

    await api.apply(busy, plan)
    beat = await api.post(f"/api/v1/nodes/{quiet.id}/heartbeat", json={}, headers=quiet.headers)
    assert beat.status == 200
    assert await statuses() == {"idle": "online", "busy": "online", "quiet": "online"}


async def test_offline_follows_each_nodes_poll_interval(make_api) -> None:
    api: Api = await make_api(poll_interval_seconds=5)
    node = await api.register()
    assert node.body["poll_interval_seconds"] == 5
    await api.services.store.heartbeat(node.id, utcnow() - timedelta(seconds=14), None, None)
    assert (await api.node(node))["status"] == "online"
    await api.services.store.heartbeat(node.id, utcnow() - timedelta(seconds=16), None, None)
    assert (await api.node(node))["status"] == "offline"


async def test_list_nodes_pages_with_cursor_and_filters_region(api: Api) -> None:
    eu_token = await api.enrollment_token(max_uses=10, region="eu")
    nodes: list[Node] = []
    for index in range(5):
        nodes.append(await api.register(f"eu-{index}", enrollment_token=eu_token))
    nodes.append(await api.register("us-0", region="us"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await api.json("GET", "/api/v1/nodes", params=query, headers=ADMIN)
        pages += 1
        assert len(page["nodes"]) <= 2
        seen += [n["id"] for n in page["nodes"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [n.id for n in nodes]
    eu = await api.json("GET", "/api/v1/nodes", params={"region": "eu"}, headers=ADMIN)
    assert [n["name"] for n in eu["nodes"]] == [f"eu-{i}" for i in range(5)]
    assert eu["next_cursor"] is None
    nowhere = await api.json("GET", "/api/v1/nodes", params={"region": "mars"}, headers=ADMIN)
    assert nowhere == {"nodes": [], "next_cursor": None}


async def test_each_sync_is_checked_against_the_deployed_sha(api: Api, wasm) -> None:
    """A node reporting other bytes under the same version is told to redeploy."""
    module = wasm.module(1)
    await api.upload_ok("hello", "1.0", module)
    node = await api.register()
    plan = await api.plan(node)
    wrong = {
        "schema_version": 0,
        "functions": [{"name": "hello", "version": "1.0", "sha256": "0" * 64}],
    }
    assert (await api.ack(node, plan["sync_id"], wrong)).status == 200
    again = await api.plan(node)
    assert kinds(again) == [
        ("deploy_function", "hello", "1.0"),
        ("remove_function", "hello", "1.0"),
    ]
    assert again["actions"][0]["sha256"] == sha256(module)


async def test_cached_plan_is_rerendered_before_its_urls_age(make_api, wasm, monkeypatch) -> None:
    """A short --url-ttl must not be outlived by the plan cache (default 300 s)."""
    import time
    from types import SimpleNamespace

    from appliance import signing

    api: Api = await make_api(url_ttl_seconds=30)
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    first = await api.plan(node)
    assert (await api.plan(node))["sync_id"] == first["sync_id"]  # served from the cache
    # 25 s later on the cache's clock: a cached URL would have 5 s of its 30 left.
    later = time.monotonic() + 25
    monkeypatch.setattr(api.services.cache, "_clock", lambda: later)  # the FleetCache's clock
    wall = time.time() + 25  # and on the signer's clock
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: wall))
    second = await api.plan(node)
    first_url, second_url = (plan["actions"][0]["download_url"] for plan in (first, second))
    assert second_url != first_url, "stale signed URLs served from the cache"
    # The plan itself did not change: it is the same open sync record, handed out again.
    assert second["sync_id"] == first["sync_id"]
    expires_in = parse_time(second["actions"][0]["url_expires_at"]) - utcnow()
    assert expires_in > timedelta(seconds=45)  # 30 s from the signer's "now", 25 s ahead


async def test_history_defaults_to_twenty_records(api: Api, wasm) -> None:
    node = await api.register()
    for index in range(22):
        await api.upload_ok(f"fn{index}", "1.0", wasm.module(index))
        await api.plan(node)  # each plan supersedes the one before
    history = await api.history(node)
    assert len(history) == 20
    assert history[0]["status"] == "pending"
    assert {r["status"] for r in history[1:]} == {"failed"}
    assert len(await api.history(node, limit=500)) == 22
