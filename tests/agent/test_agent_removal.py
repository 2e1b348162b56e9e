"""Functions leave a node when the plan says so (``DELETE /api/v1/functions/{id}``).

In-process agents against a real control plane on loopback, with the agent's
gateway app on a loopback port.
"""

from __future__ import annotations

from typing import Any

from agent_support import (
    ControlPlane,
    State,
    cached_modules,
    db_state,
    gateway_call,
    greeting,
    hello,
    local_gateway,
    stray_files,
    sync_until,
)


async def test_deleting_the_only_version_removes_the_function(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    gone = await cp.upload("gone", "1.0.0", hello("g1"))
    kept = await cp.upload("hello", "1.0.0", hello("v1"))
    agent = await make_agent("edge-1")
    await sync_until(cp, [agent], State.want(0, gone="1.0.0", hello="1.0.0"))
    compiled = agent.data_dir / "compiled"
    assert any(gone["sha256"] in p.name for p in compiled.iterdir())

    async with local_gateway(agent.runtime) as gateway:
        assert (await gateway_call(gateway, "gone"))[:2] == (200, greeting("g1"))
        await cp.delete_function(gone["id"])
        plan = await cp.json(
            "GET", f"/api/v1/nodes/{agent.node_id}/sync", token=agent.credentials.token
        )
        assert {"type": "remove_function", "name": "gone", "version": "1.0.0"} in plan["actions"]
        await sync_until(cp, [agent], State.want(0, hello="1.0.0"))

        status, _, error = await gateway_call(gateway, "gone")
        assert status == 404 and error["error"]["code"] == "FUNCTION_NOT_FOUND"
        assert (await gateway_call(gateway, "hello"))[:2] == (200, greeting("v1"))
    assert set(agent.runtime.functions()) == {"hello"}
    assert db_state(agent.data_dir / "edge.db") == State.want(0, hello="1.0.0")
    # The module file and its compiled form are collected.
    assert cached_modules(agent.data_dir) == {kept["sha256"]}
    assert not any(gone["sha256"] in p.name for p in compiled.iterdir())
    assert stray_files(agent.data_dir) == []
    assert (await cp.history(agent.node_id))[0]["functions_removed"] == 1


async def test_deleting_the_newest_version_goes_back_to_the_older_one(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    await cp.upload("hello", "1.0.0", hello("v1"))
    agent = await make_agent("edge-1")
    await sync_until(cp, [agent], State.want(0, hello="1.0.0"))
    newest = await cp.upload("hello", "2.0.0", hello("v2"))

    async with local_gateway(agent.runtime) as gateway:
        await sync_until(cp, [agent], State.want(0, hello="2.0.0"))
        assert (await gateway_call(gateway, "hello"))[:2] == (200, greeting("v2"))
        older_sha = (await cp.json("GET", "/api/v1/functions?name=hello"))["functions"][0]
        assert cached_modules(agent.data_dir) == {newest["sha256"]}  # 1.0.0 collected

        await cp.delete_function(newest["id"])
        await sync_until(cp, [agent], State.want(0, hello="1.0.0"))
        # 1.0.0 is downloaded again: it had been collected.
        assert (await gateway_call(gateway, "hello"))[:2] == (200, greeting("v1"))
    assert cached_modules(agent.data_dir) == {older_sha["sha256"]}
    assert agent.runtime.functions()["hello"].version == "1.0.0"


async def test_a_module_lost_from_the_cache_is_fetched_again(
    control_plane: ControlPlane, make_agent: Any, tmp_path: Any
) -> None:
    """A node whose module file vanished (disk fault) asks for a full plan and heals."""
    from agent_support import new_agent

    cp = control_plane
    module = await cp.upload("hello", "1.0.0", hello("v1"))
    first = await new_agent(cp, tmp_path / "edge-1")
    await sync_until(cp, [first], State.want(0, hello="1.0.0"))
    await first.close()
    (first.data_dir / "artifacts" / "sha256" / f"{module['sha256']}.wasm").unlink()

    agent = await make_agent("edge-1")  # the same data dir: restarts the same node
    assert agent.node_id == first.node_id
    assert "hello" not in agent.runtime.functions()  # nothing to serve it from
    await agent.sync_once()
    assert cached_modules(agent.data_dir) == {module["sha256"]}
    async with local_gateway(agent.runtime) as gateway:
        assert (await gateway_call(gateway, "hello"))[:2] == (200, greeting("v1"))
    assert db_state(agent.data_dir / "edge.db") == State.want(0, hello="1.0.0")
    assert (await cp.history(agent.node_id))[0]["sync_type"] == "full"
