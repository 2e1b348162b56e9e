"""The agent's timing: full jitter under the documented retry bounds, and a poll interval
from the control plane that is used only when it is a sane number of seconds."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import (
    DEFAULT_POLL_SECONDS,
    RETRY_CAP_SECONDS,
    jittered_retry,
    retry_delay,
    valid_poll_interval,
)
from agent.config import AgentConfig
from agent.credentials import Credentials
from agent.loop import Agent, Outcome

DOCUMENTED = [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]  # docs/agent.md, after 1..10 failures


def test_the_documented_schedule_bounds_every_delay() -> None:
    assert [retry_delay(n) for n in range(1, 11)] == DOCUMENTED
    assert retry_delay(10_000) == RETRY_CAP_SECONDS  # no overflow after a long outage


def test_full_jitter_spreads_retries_over_the_whole_window() -> None:
    rng = random.Random(8)
    for failures, ceiling in enumerate(DOCUMENTED, start=1):
        delays = [jittered_retry(failures, rng) for _ in range(400)]
        assert all(0 <= delay <= ceiling for delay in delays)
        if ceiling:
            # Full jitter, not ±10 %: the fleet's retries cover [0, ceiling].
            assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling
            assert len(set(delays)) == len(delays)


class Dice:
    def __init__(self, value: float) -> None:
        self.value = value
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.value


def test_the_random_source_is_injected() -> None:
    dice = Dice(0.25)
    assert jittered_retry(4, dice) == 1.0
    assert dice.calls == [(0.0, 4.0)]


@pytest.mark.parametrize(
    "value",
    [0.5, 0, -30, 0.999, True, False, math.nan, math.inf, -math.inf, "30", None, [30], 10**9],
)
def test_poll_intervals_that_are_refused(value: Any) -> None:
    assert valid_poll_interval(value) is None


@pytest.mark.parametrize("value", [1, 1.5, 30, 30.0, 86400])
def test_poll_intervals_that_are_used(value: Any) -> None:
    assert valid_poll_interval(value) == float(value)


class NoRuntime:
    name = "none"


def agent_told(interval: Any, tmp_path: Path, dice: Dice) -> Agent:
    config = AgentConfig(server="http://127.0.0.1:1", data_dir=tmp_path)
    agent = Agent(config, NoRuntime(), rng=dice)  # type: ignore[arg-type]
    agent.credentials = Credentials(
        server=config.server,
        node_id="n",
        token="t",
        token_expires_at="2030-01-01T00:00:00Z",
        name="n",
        poll_interval_seconds=interval,
    )
    return agent


@pytest.mark.parametrize("interval", [0.5, "0.5", math.nan, True, 10**12])
def test_the_agent_falls_back_to_the_default_and_says_so_once(
    interval: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dice = Dice(0.5)  # the middle of poll jitter's ±10 %: the interval itself
    agent = agent_told(interval, tmp_path, dice)
    caplog.set_level(logging.WARNING, logger="edgesync.agent")
    delays = [agent.next_delay(Outcome("unchanged")) for _ in range(5)]
    assert delays == [DEFAULT_POLL_SECONDS] * 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "poll interval" in warnings[0] and f"{DEFAULT_POLL_SECONDS:g} s" in warnings[0]


def test_a_sane_interval_from_the_control_plane_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = agent_told(2.5, tmp_path, Dice(0.5))
    assert agent.next_delay(Outcome("unchanged")) == pytest.approx(2.5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
