"""The gateway counts each deployed function's calls and failures into the agent's
next heartbeat report (the rollouts' error-rate gate reads them)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

from agent.counters import FunctionCounters
from agent.gateway import make_gateway
from agent.runtime.base import FunctionNotDeployed, Limits, Runtime
from edgesync.errors import EdgesyncError
from edgesync.protocol import FunctionRef


class StandIn:
    name = "stand-in"

    def functions(self) -> dict[str, FunctionRef]:
        return {n: FunctionRef(n, "1", "a" * 64) for n in ("ok", "trap")}

    async def invoke(self, name: str, stdin: bytes, env: Mapping[str, str], limits: Any) -> Any:
        if name == "ok":
            return SimpleNamespace(stdout=b"fine")
        if name == "trap":
            raise EdgesyncError("the function trapped", code="FUNCTION_TRAPPED", status=502)
        raise FunctionNotDeployed(f"function {name} is not deployed")


class Agent:
    def __init__(self) -> None:
        self.pending_report: dict[str, Any] = {}


async def test_calls_and_failures_are_counted_per_function(aiohttp_client: Any) -> None:
    agent = Agent()
    app = make_gateway(cast(Runtime, StandIn()), Limits(), FunctionCounters(agent))
    client = await aiohttp_client(app)
    for name in ("ok", "ok", "trap", "missing"):
        await client.post(f"/functions/{name}", data=b"x")
    assert agent.pending_report == {
        "functions": {
            "ok": {"invocations": 2, "errors": 0},
            "trap": {"invocations": 1, "errors": 1},
        }
    }
    # The loop swaps in a fresh report when it sends one: counting starts over there.
    agent.pending_report = {}
    await client.post("/functions/trap", data=b"x")
    assert agent.pending_report == {"functions": {"trap": {"invocations": 1, "errors": 1}}}


async def test_without_counters_the_gateway_counts_nothing(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_gateway(cast(Runtime, StandIn()), Limits()))
    response = await client.post("/functions/ok", data=b"x")
    assert response.status == 200 and await response.read() == b"fine"
