"""A converged node makes one request per interval: its poll carries its liveness.

An in-process agent against a real control plane on loopback. The heartbeat
goes out on the first interval (no poll has told the agent yet that liveness
rides on it), when the node has news (a new state, a pending report) and every
``HEARTBEAT_EVERY_INTERVALS`` intervals; otherwise the poll alone keeps the
node online and its agent version and state ETag current.
"""

from __future__ import annotations

from typing import Any

from agent_support import ControlPlane, metric

from agent import __version__ as agent_version
from agent.loop import HEARTBEAT_EVERY_INTERVALS

HEARTBEAT_ROUTE = "/api/v1/nodes/{node_id}/heartbeat"
SYNC_ROUTE = "/api/v1/nodes/{node_id}/sync"


async def requests_to(cp: ControlPlane, route: str, method: str, status: str) -> float:
    text = await cp.metrics()
    return metric(
        text, "edgesync_api_request_seconds_count", method=method, route=route, status=status
    )


async def heartbeats(cp: ControlPlane) -> float:
    return await requests_to(cp, HEARTBEAT_ROUTE, "POST", "200")


async def test_converged_polls_carry_liveness_and_heartbeats_are_for_news(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    agent = await make_agent("edge-1")
    assert (await agent.sync_once()).ok
    assert await heartbeats(cp) == 1  # first interval: not yet told polls carry liveness
    assert agent.api.liveness_on_poll
    for _ in range(3):
        assert (await agent.sync_once()).ok
    assert await heartbeats(cp) == 1  # converged: the polls alone
    node = await cp.node(agent.node_id)  # the node page flushes this replica's liveness
    assert node["status"] == "online" and node["agent_version"] == agent_version

    agent.pending_report["functions"] = []  # something to report: the next interval sends it
    assert (await agent.sync_once()).ok
    assert await heartbeats(cp) == 2 and agent.pending_report == {}

    for _ in range(HEARTBEAT_EVERY_INTERVALS - 1):
        assert (await agent.sync_once()).ok
    assert await heartbeats(cp) == 2
    assert (await agent.sync_once()).ok  # the N-th interval without one
    assert await heartbeats(cp) == 3


async def test_an_older_control_plane_gets_a_heartbeat_every_interval(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    agent = await make_agent("edge-1")
    for _ in range(3):
        assert (await agent.sync_once()).ok
        agent.api.liveness_on_poll = False  # as if the poll's answer had not said it
    assert await heartbeats(cp) == 3
