"""Releases, fleet settings and pins: every route and code of the v2 contract."""

from __future__ import annotations

from typing import Any

from api_support import ADMIN, Api, expect_error


async def upload(api: Api, name: str, version: str, module: bytes, requires: int = 0) -> Any:
    data = api.form(name, version, module)
    data.add_field("requires_schema", str(requires))
    response = await api.client.post("/api/v1/functions", data=data, headers=ADMIN)
    assert response.status == 201, await response.text()
    return await response.json()


async def release(api: Api, status: int = 201, **body: Any) -> Any:
    return await api.json("POST", "/api/v1/releases", status, json=body, headers=ADMIN)


async def test_auto_release_numbers_every_change_and_keeps_v1_targets(api: Api, wasm) -> None:
    node = await api.register()
    await api.upload_ok("hello", "1.0", wasm.module(1))
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);", down_sql="DROP TABLE t;")
    listed = await api.json("GET", "/api/v1/releases", headers=ADMIN)
    numbers = [r["number"] for r in listed["releases"]]
    assert numbers == [2, 1]  # newest first, one per change
    newest = listed["releases"][0]
    assert newest["schema_version"] == 1
    assert [(f["name"], f["version"]) for f in newest["functions"]] == [("hello", "1.0")]
    plan = await api.plan(node)
    assert plan["target"]["schema_version"] == 1
    assert (await api.node(node))["release_id"] == newest["id"]


async def test_release_validation_codes(api: Api, wasm) -> None:
    await upload(api, "hello", "1.0", wasm.module(1), requires=1)
    await upload(api, "hello", "2.0", wasm.module(2))
    response = await api.client.post(
        "/api/v1/releases",
        json={"schema_version": 0, "functions": [{"name": "nope", "version": "1"}]},
        headers=ADMIN,
    )
    await expect_error(response, 404, "FUNCTION_NOT_FOUND")
    response = await api.client.post("/api/v1/releases", json={"schema_version": 7}, headers=ADMIN)
    await expect_error(response, 400, "INVALID_RELEASE")
    both = [{"name": "hello", "version": "1.0"}, {"name": "hello", "version": "2.0"}]
    response = await api.client.post(
        "/api/v1/releases", json={"schema_version": 0, "functions": both}, headers=ADMIN
    )
    await expect_error(response, 400, "INVALID_RELEASE")
    response = await api.client.post(
        "/api/v1/releases",
        json={"schema_version": 0, "functions": [{"name": "hello", "version": "1.0"}]},
        headers=ADMIN,
    )
    body = await expect_error(response, 409, "INCOMPATIBLE_RELEASE")
    assert body["details"]["requires_schema"] == 1
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    made = await release(
        api, schema_version=1, functions=[{"name": "hello", "version": "1.0"}], notes="n"
    )
    assert made["notes"] == "n" and made["schema_version"] == 1
    shown = await api.json("GET", f"/api/v1/releases/{made['id']}", headers=ADMIN)
    assert shown["number"] == made["number"]
    assert shown["previous_release_id"] is not None
    response = await api.client.get(
        "/api/v1/releases/00000000-0000-0000-0000-000000000000", headers=ADMIN
    )
    await expect_error(response, 404, "NOT_FOUND")


async def test_requires_schema_must_be_a_version(api: Api, wasm) -> None:
    data = api.form("hello", "1.0", wasm.module(1))
    data.add_field("requires_schema", "-1")
    response = await api.client.post("/api/v1/functions", data=data, headers=ADMIN)
    await expect_error(response, 400, "VALIDATION_FAILED")


async def test_release_list_pages_newest_first(api: Api, wasm) -> None:
    for index in range(3):
        await api.upload_ok(f"f{index}", "1.0", wasm.module(index))
    first = await api.json("GET", "/api/v1/releases", params={"limit": 2}, headers=ADMIN)
    assert [r["number"] for r in first["releases"]] == [3, 2]
    rest = await api.json(
        "GET",
        "/api/v1/releases",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=ADMIN,
    )
    assert [r["number"] for r in rest["releases"]] == [1] and rest["next_cursor"] is None


async def test_auto_release_off_changes_no_target(api: Api, wasm) -> None:
    node = await api.register()
    await api.upload_ok("hello", "1.0", wasm.module(1))
    plan = await api.plan(node)
    await api.apply(node, plan)
    fleet = await api.json("PUT", "/api/v1/fleet", json={"auto_release": False}, headers=ADMIN)
    assert fleet["auto_release"] is False and fleet["default_release_id"] is not None
    await api.upload_ok("hello", "2.0", wasm.module(2))
    after = await api.plan(node)
    assert after["actions"] == []  # the upload made no release and moved no node
    newcomer = await api.register()
    first = await api.plan(newcomer)  # a new node gets the default release
    assert [f["version"] for f in first["target"]["functions"]] == ["1.0"]
    made = await release(api, schema_version=0, functions=[{"name": "hello", "version": "2.0"}])
    put = await api.json(
        "PUT", "/api/v1/fleet", json={"default_release_id": made["id"]}, headers=ADMIN
    )
    assert put == {"auto_release": False, "default_release_id": made["id"]}
    assert await api.json("GET", "/api/v1/fleet", headers=ADMIN) == put
    response = await api.client.put("/api/v1/fleet", json={"auto_release": "no"}, headers=ADMIN)
    await expect_error(response, 400, "VALIDATION_FAILED")


async def test_pin_holds_a_node_and_unpin_releases_it(api: Api, wasm) -> None:
    pinned, other = await api.register(), await api.register()
    await api.upload_ok("hello", "1.0", wasm.module(1))
    first = (await api.json("GET", "/api/v1/releases", headers=ADMIN))["releases"][0]
    body = await api.json(
        "PUT", f"/api/v1/nodes/{pinned.id}/pin", json={"release_id": first["id"]}, headers=ADMIN
    )
    assert body["pinned_release_id"] == first["id"] and body["release_id"] == first["id"]
    await api.upload_ok("hello", "2.0", wasm.module(2))
    assert [f["version"] for f in (await api.plan(pinned))["target"]["functions"]] == ["1.0"]
    assert [f["version"] for f in (await api.plan(other))["target"]["functions"]] == ["2.0"]
    body = await api.json("DELETE", f"/api/v1/nodes/{pinned.id}/pin", headers=ADMIN)
    assert body["pinned_release_id"] is None and body["release_id"] != first["id"]
    assert [f["version"] for f in (await api.plan(pinned))["target"]["functions"]] == ["2.0"]
    response = await api.client.put(
        f"/api/v1/nodes/{pinned.id}/pin", json={"release_id": "missing"}, headers=ADMIN
    )
    await expect_error(response, 404, "NOT_FOUND")
    response = await api.client.put(
        "/api/v1/nodes/missing/pin", json={"release_id": first["id"]}, headers=ADMIN
    )
    await expect_error(response, 404, "NOT_FOUND")


async def test_rolling_a_node_back_across_a_migration_reverts_its_schema(api: Api, wasm) -> None:
    node = await api.register()
    await api.upload_ok("hello", "1.0", wasm.module(1))
    before = (await api.json("GET", "/api/v1/releases", headers=ADMIN))["releases"][0]
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);", down_sql="DROP TABLE t;")
    await api.add_schema(2, "CREATE TABLE u (x INTEGER);", down_sql="DROP TABLE u;")
    await api.apply(node, await api.plan(node))
    await api.json(
        "PUT", f"/api/v1/nodes/{node.id}/pin", json={"release_id": before["id"]}, headers=ADMIN
    )
    plan = await api.plan(node)
    assert [(a["type"], a.get("version")) for a in plan["actions"]] == [
        ("revert_schema", 2),
        ("revert_schema", 1),
    ]
    assert plan["actions"][0]["down_sql"] == "DROP TABLE u;"
    assert plan["target"]["schema_version"] == 0


async def test_release_routes_are_admin_only(api: Api) -> None:
    node = await api.register()
    for method, path in (("GET", "/api/v1/releases"), ("GET", "/api/v1/fleet")):
        response = await api.client.request(method, path, headers=node.headers)
        await expect_error(response, 403, "FORBIDDEN")


async def test_auto_release_off_before_any_release_holds_every_node(api: Api, wasm) -> None:
    node = await api.register()
    fleet = await api.json("PUT", "/api/v1/fleet", json={"auto_release": False}, headers=ADMIN)
    listed = (await api.json("GET", "/api/v1/releases", headers=ADMIN))["releases"]
    assert [(r["number"], r["schema_version"], r["functions"]) for r in listed] == [(1, 0, [])]
    assert fleet["default_release_id"] == listed[0]["id"]
    await api.upload_ok("hello", "1.0", wasm.module(1))
    assert (await api.plan(node))["actions"] == []
    assert (await api.plan(await api.register()))["actions"] == []


async def test_a_deleted_version_leaves_the_targets_of_older_releases(api: Api, wasm) -> None:
    node = await api.register()
    first = await api.upload_ok("hello", "1.0", wasm.module(1))
    await api.upload_ok("other", "1.0", wasm.module(2))
    held = (await api.json("GET", "/api/v1/releases", headers=ADMIN))["releases"][0]
    await api.json(
        "PUT", f"/api/v1/nodes/{node.id}/pin", json={"release_id": held["id"]}, headers=ADMIN
    )
    await api.apply(node, await api.plan(node))
    await api.delete(f"/api/v1/functions/{first['id']}", headers=ADMIN)
    plan = await api.plan(node)  # the pinned release named it; its bytes are gone
    assert [(a["type"], a["name"]) for a in plan["actions"]] == [("remove_function", "hello")]
