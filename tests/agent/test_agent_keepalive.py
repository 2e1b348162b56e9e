"""The agent keeps its control-plane connection for its own poll interval, not a fixed one."""

from __future__ import annotations

from typing import Any

from agent.api import KEEPALIVE_SECONDS, keepalive_seconds


async def test_the_agents_keepalive_follows_the_interval_it_polls_at(make_agent: Any) -> None:
    agent = await make_agent("edge-1")  # the test control plane says: poll every second
    assert (await agent.sync_once()).ok
    assert agent.poll_interval != 30
    assert agent.api.keepalive_seconds == keepalive_seconds(agent.poll_interval)
    assert agent.api.keepalive_seconds != KEEPALIVE_SECONDS
    session = await agent.api._client()
    assert session.connector is not None
    assert session.connector._keepalive_timeout == keepalive_seconds(agent.poll_interval)
