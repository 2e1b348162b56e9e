"""Agents keep their control-plane connection across poll intervals (issue 10, item 5),
and ``--bcrypt-cost`` (for benchmarks and tests) is bounded like bcrypt itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.api import KEEPALIVE_SECONDS, ControlPlane, keepalive_seconds
from appliance.config import ServeConfig
from edgesync.commands.serve import serve

INTERVALS = [1, 30, 60, 600, 86400]


def test_agent_keeps_idle_connections_longer_than_a_jittered_default_interval() -> None:
    longest_wait = ServeConfig().poll_interval_seconds * 1.1  # agent.backoff.jittered
    assert KEEPALIVE_SECONDS > longest_wait


@pytest.mark.parametrize("interval", INTERVALS)
def test_server_keeps_connections_longer_than_the_agent_and_the_interval(interval: int) -> None:
    config = ServeConfig(poll_interval_seconds=interval)
    agent = keepalive_seconds(interval)
    # The agent's outlives its longest wait; the server's outlives the agent's, so
    # the server never closes a connection the agent may reuse.
    assert interval * 1.1 < agent < config.keepalive_seconds


async def test_the_agents_session_uses_the_long_keepalive() -> None:
    async with ControlPlane("http://127.0.0.1:9") as api:
        connector = (await api._client()).connector
        assert connector is not None
        assert connector._keepalive_timeout == KEEPALIVE_SECONDS  # aiohttp's default: 15 s


async def test_the_agents_keepalive_follows_its_poll_interval() -> None:
    async with ControlPlane("http://127.0.0.1:9") as api:
        first = await api._client()
        api.follow_poll_interval(300)  # e.g. told at enrollment: a new session keeps longer
        second = await api._client()
        assert first.closed and second.connector is not None
        assert second.connector._keepalive_timeout == keepalive_seconds(300) > 300 * 1.1
        api.follow_poll_interval(300)
        assert await api._client() is second  # the same interval keeps the session


@pytest.mark.parametrize("cost", [3, 32])
def test_bcrypt_cost_out_of_bcrypts_range_is_refused(tmp_path: Path, cost: int) -> None:
    with pytest.raises(ValueError, match="--bcrypt-cost"):
        ServeConfig(data_dir=tmp_path, bcrypt_rounds=cost).validate()
    result = CliRunner().invoke(serve, ["--data-dir", str(tmp_path), "--bcrypt-cost", str(cost)])
    assert result.exit_code != 0
    assert "--bcrypt-cost" in result.output


def test_bcrypt_cost_default_stays_12() -> None:
    assert ServeConfig().bcrypt_rounds == 12
