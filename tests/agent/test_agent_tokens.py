"""Node token rotation: an agent whose token nears expiry rotates it and keeps syncing.

The agent's clock is injected: shifted to a day before the token's ``exp``, it
makes the agent believe the token is about to expire.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from agent_support import ControlPlane, FakeClock, State, hello, new_agent, sync_until

from agent.loop import Agent
from edgesync.protocol import parse_time


async def test_a_token_near_expiry_is_rotated_and_the_node_keeps_syncing(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    await cp.upload("hello", "1.0.0", hello("v1"))
    clock = FakeClock()
    agent = await new_agent(cp, tmp_path / "edge-1", clock=clock)
    try:
        await rotation(cp, agent, clock)
    finally:
        await agent.close()

    # A restart reads the rotated token from node.json.
    again = await new_agent(cp, agent.data_dir, enroll=False)
    try:
        assert again.node_id == agent.node_id
        assert again.credentials.token == agent.credentials.token
        await cp.upload("hello", "1.2.0", hello("v3"))
        await sync_until(cp, [again], State.want(0, hello="1.2.0"))
    finally:
        await again.close()


async def rotation(cp: ControlPlane, agent: Agent, clock: FakeClock) -> None:
    await sync_until(cp, [agent], State.want(0, hello="1.0.0"))
    node_json = agent.data_dir / "node.json"
    old_token = agent.credentials.token
    old_expiry = agent.credentials.token_expires_at
    own_route = f"/api/v1/nodes/{agent.node_id}"
    assert (await cp.call("GET", own_route, token=old_token))[0] == 200

    # Far from expiry: no rotation.
    assert (await agent.sync_once()).ok
    assert agent.credentials.token == old_token

    # A day before the token's exp: the next sync rotates it first.
    clock.offset = parse_time(old_expiry).timestamp() - 86400 - time.time()
    assert (await agent.sync_once()).ok
    new_token = agent.credentials.token
    assert new_token != old_token
    status, body = await cp.call("GET", own_route, token=old_token, expect=None)
    assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    assert (await cp.call("GET", own_route, token=new_token))[0] == 200
    stored = json.loads(node_json.read_text())
    assert stored["token"] == new_token
    assert stored["token_expires_at"] == agent.credentials.token_expires_at
    assert stored["node_id"] == agent.node_id
    assert stat.S_IMODE(node_json.stat().st_mode) == 0o600
    assert not list(agent.data_dir.glob(".node.json*"))  # no temporary file left

    # It keeps syncing on the new token, and rotates no more once time is normal.
    clock.offset = 0
    await cp.upload("hello", "1.1.0", hello("v2"))
    await sync_until(cp, [agent], State.want(0, hello="1.1.0"))
    assert agent.credentials.token == new_token


async def test_a_rotation_whose_answer_was_lost_is_finished_after_a_restart(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The agent saves the jti it asks for before asking: a lost answer cannot lock it out."""
    cp = control_plane
    await cp.upload("hello", "1.0.0", hello("v1"))
    agent = await new_agent(cp, tmp_path / "edge-1")
    await sync_until(cp, [agent], State.want(0, hello="1.0.0"))
    old_token = agent.credentials.token
    # The agent chose a jti and saved it; the server rotated; the answer never arrived.
    agent.credentials.pending_jti = "0f" * 16
    agent.credentials.save(agent.data_dir)
    status, _ = await cp.call(
        "POST",
        f"/api/v1/nodes/{agent.node_id}/token/rotate",
        json={"jti": "0f" * 16},
        token=old_token,
    )
    assert status == 200
    await agent.close()

    again = await new_agent(cp, agent.data_dir, enroll=False)
    try:
        assert again.credentials.token == old_token  # the one the server retired
        assert (await again.sync_once()).ok  # finishes the rotation, then syncs
        assert again.credentials.token != old_token
        assert again.credentials.pending_jti is None
        saved = json.loads((again.data_dir / "node.json").read_text())
        assert saved["token"] == again.credentials.token and saved["pending_jti"] is None
        await cp.upload("hello", "2.0.0", hello("v2"))
        await sync_until(cp, [again], State.want(0, hello="2.0.0"))
    finally:
        await again.close()
