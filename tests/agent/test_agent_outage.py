"""The control plane goes away: the node keeps serving and backs off on schedule.

An in-process agent runs its real loop (``Agent.run``) on an injected fake
clock that records every sleep it asks for and returns at once: the retry
schedule is checked without waiting for wall time. The control plane is a real
one on loopback, stopped (its port then refuses connections) and restarted on
the same port and data dir.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent_support import (
    AgentProcess,
    ControlPlane,
    FakeClock,
    State,
    eventually,
    example,
    gateway_call,
    greeting,
    hello,
    local_gateway,
    spawn_agent,
    sync_until,
)

from agent.backoff import retry_delay

# The documented ceilings of the transient retry schedule (docs/agent.md).
SCHEDULE = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


class Ceiling:
    """An injected random source that always picks the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def is_poll_interval(delay: float) -> bool:
    return 0.18 <= delay <= 0.2200001  # 0.2 s ± 10 % jitter


async def test_the_node_serves_through_an_outage_and_backs_off_on_schedule(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    await cp.upload("hello", "1.0.0", hello("v1"))
    await cp.upload("echo", "1.0.0", example("echo"))
    clock = FakeClock()
    agent = await make_agent("edge-1", clock=clock, rng=Ceiling())
    await sync_until(cp, [agent], State.want(1, hello="1.0.0", echo="1.0.0"))
    status_file = agent.data_dir / "agent-status.json"
    during_outage: list[tuple[int, bytes, str, dict[str, Any]]] = []
    down_again = len(SCHEDULE) + 2

    async def script(count: int, seconds: float) -> None:
        """Runs at the agent's ``count``-th sleep: the test's timeline."""
        if cp.running and count < down_again:
            return
        if count <= len(SCHEDULE):
            # Down: the gateway still answers from the runtime; the status says why.
            status, body, _ = await gateway_call(gateway, "hello", b"x")
            status_now = json.loads(status_file.read_text())
            during_outage.append(
                (status, body, status_now["last_outcome"], agent.runtime.functions())
            )
            if count == len(SCHEDULE):
                await cp.start()  # back, with a release published meanwhile
                await cp.upload("hello", "1.1.0", hello("v2"))
        elif count == down_again:
            await cp.stop()  # down once more: the schedule starts over
        elif count == down_again + 2:
            agent.stop()

    async with local_gateway(agent.runtime) as gateway:
        await cp.stop()
        clock.on_sleep = script
        await agent.run()
        assert (await gateway_call(gateway, "hello", b"x"))[:2] == (200, greeting("v2", b"x"))
    await cp.start()

    # Nine failed syncs, each followed by the next delay of the schedule (at its top)...
    assert clock.sleeps[: len(SCHEDULE)] == SCHEDULE
    for status, body, outcome, functions in during_outage:
        assert (status, body) == (200, greeting("v1", b"x"))
        assert outcome == "unreachable"
        assert set(functions) == {"hello", "echo"}
    assert len(during_outage) == len(SCHEDULE)
    # ...then the control plane is back: the next sync applies the new release and the
    # loop polls on its interval again (the failure count is reset)...
    back = clock.sleeps[len(SCHEDULE) :]
    assert is_poll_interval(back[0]) and is_poll_interval(back[1]), back
    assert await cp.node_state(agent.node_id) == State.want(1, hello="1.1.0", echo="1.0.0")
    # ...so the next outage starts the schedule from its beginning again.
    assert back[2:] == SCHEDULE[:2]
    last = json.loads(status_file.read_text())
    assert last["last_outcome"] == "unreachable"
    assert last["last_error"]["retryable"] is True


class Recorder:
    """An injected random source: answers the middle of the range, records each range."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return (a + b) / 2


async def test_transient_retries_are_fully_jittered_under_the_schedule(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    """Full jitter: each delay is drawn from [0, the documented delay], never the delay
    itself, so a fleet cut off together does not come back in lockstep."""
    cp = control_plane
    clock, dice = FakeClock(), Recorder()
    agent = await make_agent("edge-1", clock=clock, rng=dice)
    await agent.sync_once()
    dice.ranges.clear()

    async def script(count: int, seconds: float) -> None:
        if count == len(SCHEDULE):
            agent.stop()

    await cp.stop()
    clock.on_sleep = script
    await agent.run()
    assert dice.ranges == [(0.0, ceiling) for ceiling in SCHEDULE]
    assert clock.sleeps == [ceiling / 2 for ceiling in SCHEDULE]
    # The documented bounds (docs/agent.md) are the ceilings.
    assert [retry_delay(n) for n in range(1, len(SCHEDULE) + 1)] == SCHEDULE


AGENT_LINE = re.compile(r" (?P<level>[A-Z]+) edgesync\.agent (?P<message>.*)")


def agent_lines(process: AgentProcess) -> list[tuple[str, str]]:
    lines = (AGENT_LINE.search(line) for line in process.log().splitlines())
    return [(match["level"], match["message"]) for match in lines if match]


async def test_an_outage_is_logged_when_it_starts_and_when_it_ends(
    control_plane: ControlPlane, tmp_path: Path, agent_processes: list[AgentProcess]
) -> None:
    """A real agent process, a control plane stopped and restarted: one WARNING when it
    is lost, one INFO when it is back, and the retries between only at DEBUG."""
    cp = control_plane
    agent = await spawn_agent(cp, tmp_path / "edge", enrollment_token=await cp.enrollment_token())
    agent_processes.append(agent)

    def failed_tries() -> int:
        return sum(message.startswith("sync try") for _, message in agent_lines(agent))

    await eventually(
        lambda: "unchanged" in (agent.data_dir / "agent-status.json").read_text(), "a first sync"
    )
    await cp.stop()
    await eventually(lambda: failed_tries() >= 3, "three retries", diagnose=agent.log)
    await cp.start()
    await eventually(
        lambda: any("reachable again" in message for _, message in agent_lines(agent)),
        "the agent to find the control plane again",
        diagnose=agent.log,
    )
    assert await agent.stop() == 0
    lines = agent_lines(agent)
    warnings = [message for level, message in lines if level in ("WARNING", "ERROR")]
    assert len(warnings) == 1, agent.log()
    # Usually "cannot reach http://…: connection refused (UNREACHABLE)"; a poll caught
    # by the shutdown itself may see the server close or answer 503 first.
    assert warnings[0].startswith("lost the control plane: "), warnings
    assert "ssl:default" not in warnings[0] and "Cannot connect" not in warnings[0]
    back = [message for level, message in lines if level == "INFO" and "again" in message]
    assert len(back) == 1, agent.log()
    assert back[0].startswith(f"control plane {cp.url} reachable again after ")
