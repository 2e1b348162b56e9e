"""Fixtures of the agent suites.

The integration tests (``test_agent_*.py``) get a real control plane on a
loopback port (``control_plane``), a factory of in-process agents that are
closed after the test (``make_agent``) and a list that kills every agent
subprocess a test leaves running (``agent_processes``). Helpers live in
``agent_support.py`` beside this file. ``database``: the node's database, once
through libsql and once through the stdlib sqlite3 (the aarch64 zipapp's driver).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import AgentProcess, ControlPlane, new_agent

from agent.edgedb import EdgeDatabase
from agent.loop import Agent

AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture(params=["libsql", "sqlite3"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EdgeDatabase]:
    db = EdgeDatabase(tmp_path / "edge.db", driver=request.param)
    yield db
    db.close()


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """``make_app`` with embedded stores, served on 127.0.0.1 by the test's event loop."""
    plane = ControlPlane(tmp_path / "server")
    await plane.start()
    try:
        yield plane
    finally:
        await plane.close()


@pytest.fixture
async def make_agent(control_plane: ControlPlane, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """``await make_agent("edge-1", **config)``: an enrolled, opened in-process agent."""
    opened: list[Agent] = []

    async def build(name: str, **options: Any) -> Agent:
        agent = await new_agent(control_plane, tmp_path / name, name=name, **options)
        opened.append(agent)
        return agent

    try:
        yield build
    finally:
        for agent in reversed(opened):
            await agent.close()


@pytest.fixture
def agent_processes() -> Any:
    """Append every spawned :class:`AgentProcess`; whatever still runs is killed at the end."""
    spawned: list[AgentProcess] = []
    yield spawned
    for process in spawned:
        process.kill()
