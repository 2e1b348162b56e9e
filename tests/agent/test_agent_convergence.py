"""A fleet converges on releases, and a node comes back after a restart.

Real ``edgesync agent`` processes against a real control plane on loopback:
three nodes take a release (a migration and a function), then an upgrade; one
is stopped, misses a release, and on restart (no enrollment token, not even
``--server``: its stored credentials) keeps its identity and catches up.
"""

from __future__ import annotations

import stat
from pathlib import Path

import aiohttp
import pytest
from agent_support import (
    AgentProcess,
    ControlPlane,
    State,
    converged,
    db_state,
    example,
    gateway_call,
    greeting,
    hello,
    release_view,
    spawn_agent,
    wasmedge_or_fail,
)


async def get_json(url: str) -> object:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.json()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def expect_hello(agent: AgentProcess, tag: str) -> None:
    status, body, _ = await gateway_call(agent.gateway, "hello", b"ping")
    assert (status, body) == (200, greeting(tag, b"ping")), agent.log()


@pytest.mark.parametrize("runtime", ["wasmtime", "wasmedge"])
async def test_three_agents_converge_then_a_restarted_node_catches_up(
    control_plane: ControlPlane,
    agent_processes: list[AgentProcess],
    tmp_path: Path,
    runtime: str,
) -> None:
    if runtime == "wasmedge":
        wasmedge_or_fail()
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    await cp.upload("hello", "1.0.0", hello("v1"))

    # Three nodes enroll with one token (max_uses=3) and take release 1.
    token = await cp.enrollment_token(max_uses=3)
    dirs = [tmp_path / f"edge-{i}" for i in (1, 2, 3)]
    agents = []
    for i, data_dir in enumerate(dirs, 1):
        agent = await spawn_agent(
            cp,
            data_dir,
            enrollment_token=token,
            runtime=runtime,
            args=("--name", data_dir.name, "--region", "eu", "--label", f"rack={i}"),
        )
        agent_processes.append(agent)
        agents.append(agent)
    ids = [agent.node_id for agent in agents]
    assert len(set(ids)) == 3
    release1 = State.want(1, hello="1.0.0")
    await converged(cp, ids, release1)
    for agent, data_dir in zip(agents, dirs, strict=True):
        health = await get_json(f"{agent.gateway}/healthz")
        assert health == {"status": "ok", "runtime": runtime, "functions": 1}
        await expect_hello(agent, "v1")
        assert db_state(data_dir / "edge.db") == release1
        assert mode_of(data_dir / "node.json") == 0o600
    registered = {node["id"]: node for node in await cp.nodes()}
    assert set(registered) == set(ids)
    assert registered[ids[2]]["labels"] == {"rack": "3"}
    assert registered[ids[2]]["region"] == "eu"

    # The upgrade: a second migration, a new version of hello and a new function.
    await cp.add_schema(
        2, "ALTER TABLE kv ADD COLUMN updated_at TEXT;\nCREATE INDEX kv_updated ON kv (updated_at);"
    )
    await cp.upload("hello", "1.1.0", hello("v2"))
    await cp.upload("echo", "1.0.0", example("echo"))
    release2 = State.want(2, hello="1.1.0", echo="1.0.0")
    await converged(cp, ids, release2)
    for agent in agents:
        await expect_hello(agent, "v2")
        assert (await gateway_call(agent.gateway, "echo", b"body"))[:2] == (200, b"body")
    views = [release_view(d / "edge.db", history=False) for d in dirs]
    assert views[0] == views[1] == views[2]
    assert ("index", "kv_updated", "kv") in {row[:3] for row in views[0]["schema"]}

    # Node 3 stops; a release is published while it is down.
    down, down_dir = agents[2], dirs[2]
    assert await down.stop() == 0, down.log()
    credentials_before = (down_dir / "node.json").read_text()
    view_before = release_view(down_dir / "edge.db")
    await cp.add_schema(3, "CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL)")
    await cp.upload("hello", "1.2.0", hello("v3"))
    release3 = State.want(3, hello="1.2.0", echo="1.0.0")
    await converged(cp, ids[:2], release3)
    assert await cp.node_state(ids[2]) == release2
    assert release_view(down_dir / "edge.db") == view_before

    # It restarts on its stored credentials: no enrollment token, no --server.
    back = await spawn_agent(cp, down_dir, runtime=runtime, server=False)
    agent_processes.append(back)
    assert back.node_id == ids[2]
    await converged(cp, ids, release3)
    await expect_hello(back, "v3")
    assert {node["id"] for node in await cp.nodes()} == set(ids)  # no second registration
    assert mode_of(down_dir / "node.json") == 0o600
    assert (down_dir / "node.json").read_text() == credentials_before
    assert release_view(down_dir / "edge.db", history=False) == release_view(
        dirs[0] / "edge.db", history=False
    )

    for agent in (*agents[:2], back):
        assert await agent.stop() == 0, agent.log()
