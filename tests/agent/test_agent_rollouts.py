"""Rollouts with real agents (in-process, their real edge databases) against the real app:
the schema and function move as one release, a canary is rolled back across a
migration with its down_sql (tables and data checked), a migration failing on the
canary pauses the rollout, and the rest of the fleet is never touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_support import ControlPlane, State, hello, read_db, sync_until, write_db

from agent.loop import Agent
from appliance.rollouts.engine import ROLLOUTS

KV = "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"
EXTRA = "CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT)"


async def evaluate(cp: ControlPlane, rollout: dict[str, Any]) -> dict[str, Any]:
    assert cp._runner is not None
    await cp._runner.app[ROLLOUTS].evaluate(rollout["id"])
    return await cp.json("GET", f"/api/v1/rollouts/{rollout['id']}")  # type: ignore[no-any-return]


async def v1_fleet(cp: ControlPlane, make_agent: Any) -> list[Agent]:
    """Two agents on schema 1 (kv) + hello v1, auto-release then switched off."""
    await cp.add_schema(1, KV, down_sql="DROP TABLE kv")
    await cp.upload("hello", "1.0", hello("v1"))
    agents = [await make_agent("edge-a"), await make_agent("edge-b")]
    await sync_until(cp, agents, State.want(1, hello="1.0"))
    await cp.json("PUT", "/api/v1/fleet", json={"auto_release": False})
    return sorted(agents, key=lambda a: a.node_id)


def tables(data_dir: Path) -> set[str]:
    return {name for name in read_db(data_dir / "edge.db")["rows"] if not name.startswith("_")}


async def test_canary_rolled_back_across_a_migration_keeps_its_data(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    canary, other = await v1_fleet(cp, make_agent)
    before = (await cp.json("GET", "/api/v1/releases"))["releases"][0]
    await cp.add_schema(2, EXTRA, down_sql="DROP TABLE audit")
    await cp.upload("hello", "2.0", hello("v2"))
    body = {"schema_version": 2, "functions": [{"name": "hello", "version": "2.0"}]}
    release = await cp.json("POST", "/api/v1/releases", 201, json=body)
    # Schema and function arrive together: the other node's plan is still empty.
    assert (await other.sync_once()).kind == "converged"
    rollout = await cp.json(
        "POST",
        "/api/v1/rollouts",
        201,
        json={
            "release_id": release["id"],
            "waves": [1, "100%"],
            "observe_seconds": 3600,
            "max_function_error_rate": 0.05,
        },
    )
    await canary.sync_once()
    assert await cp.node_state(canary.node_id) == State.want(2, hello="2.0")
    assert "audit" in tables(canary.data_dir)
    write_db(canary.data_dir / "edge.db", "INSERT INTO kv (k, v) VALUES ('keep', 'me')")
    rollout = await evaluate(cp, rollout)
    assert rollout["state"] == "running" and rollout["waves"][1]["state"] == "pending"
    # The new function fails on the canary: its heartbeat carries the counts.
    canary.pending_report["functions"] = {"hello": {"invocations": 20, "errors": 5}}
    await canary.sync_once()
    rollout = await evaluate(cp, rollout)
    assert rollout["state"] == "rolled_back"
    assert (await cp.node(canary.node_id))["release_id"] == before["id"]
    await canary.sync_once()
    assert await cp.node_state(canary.node_id) == State.want(1, hello="1.0")
    assert "audit" not in tables(canary.data_dir)
    rows = read_db(canary.data_dir / "edge.db")["rows"]
    assert [tuple(r) for r in rows["kv"]] == [("keep", "me")]
    # The rest of the fleet was never touched.
    assert await cp.node_state(other.node_id) == State.want(1, hello="1.0")
    assert len(await cp.history(other.node_id)) == 1


async def test_a_migration_failing_on_the_canary_pauses_the_rollout(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    canary, other = await v1_fleet(cp, make_agent)
    write_db(canary.data_dir / "edge.db", "INSERT INTO kv (k, v) VALUES ('seed', 'x')")
    # Applies on an empty database (the control plane's check), not on the canary's data.
    await cp.add_schema(
        2, "INSERT INTO kv (k, v) VALUES ('seed', 'y')", down_sql="DELETE FROM kv WHERE k = 'seed'"
    )
    body = {"schema_version": 2, "functions": [{"name": "hello", "version": "1.0"}]}
    release = await cp.json("POST", "/api/v1/releases", 201, json=body)
    rollout = await cp.json(
        "POST",
        "/api/v1/rollouts",
        201,
        json={"release_id": release["id"], "waves": [1, "100%"], "auto_rollback": False},
    )
    outcome = await canary.sync_once()
    assert not outcome.ok
    rollout = await evaluate(cp, rollout)
    assert rollout["state"] == "paused" and rollout["failures"] == 1
    assert rollout["waves"][1]["nodes"] == {"pending": 1, "applied": 0, "failed": 0}
    assert await cp.node_state(canary.node_id) == State.want(1, hello="1.0")
    assert (await other.sync_once()).kind == "converged"


async def test_waves_advance_as_real_agents_ack(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    await cp.upload("hello", "1.0", hello("v1"))
    agents = [await make_agent(f"edge-{i}") for i in range(3)]
    await sync_until(cp, agents, State.want(0, hello="1.0"))
    await cp.json("PUT", "/api/v1/fleet", json={"auto_release": False})
    await cp.upload("hello", "2.0", hello("v2"))
    body = {"schema_version": 0, "functions": [{"name": "hello", "version": "2.0"}]}
    release = await cp.json("POST", "/api/v1/releases", 201, json=body)
    rollout = await cp.json(
        "POST", "/api/v1/rollouts", 201, json={"release_id": release["id"], "waves": [1, "100%"]}
    )
    canary, *rest = sorted(agents, key=lambda a: a.node_id)
    for agent in rest:  # the second wave has not started: nothing to do
        assert (await agent.sync_once()).kind == "converged"
    await canary.sync_once()
    rollout = await evaluate(cp, rollout)
    assert [w["state"] for w in rollout["waves"]] == ["done", "running"]
    for agent in rest:
        await agent.sync_once()
    rollout = await evaluate(cp, rollout)
    assert rollout["state"] == "completed" and rollout["failures"] == 0
    for agent in agents:
        assert await cp.node_state(agent.node_id) == State.want(0, hello="2.0")
    # Auto-release back on: the nodes the rollout left on its release follow the latest.
    await cp.json("PUT", "/api/v1/fleet", json={"auto_release": True})
    await cp.upload("hello", "3.0", hello("v3"))
    await sync_until(cp, agents, State.want(0, hello="3.0"))
