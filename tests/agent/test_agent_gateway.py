"""The gateway of a real ``edgesync agent`` process, serving what the control plane deployed.

``POST /functions/{name}`` passes the body on stdin and the request as CGI
variables (never the Authorization header); failing functions answer 502 with
the error envelope; and no function, however faulty or endless, takes the agent
down: the gateway answers and the agent keeps syncing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
from agent_support import (
    AgentProcess,
    ControlPlane,
    State,
    converged,
    env_printer,
    example,
    gateway_call,
    greeting,
    hello,
    parse_environ,
    spawn_agent,
)

FUNCTIONS = {
    "echo": example("echo"),
    "env": env_printer(),
    "trap": example("trap"),
    "loop": example("loop"),
    "exit3": example("exit3"),
    "hello": hello("v1"),
}


async def get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def check_envelope(body: object, code: str) -> dict[str, object]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details", "retryable"}, error
    assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


async def test_the_gateway_of_a_running_agent(
    control_plane: ControlPlane, agent_processes: list[AgentProcess], tmp_path: Path
) -> None:
    cp = control_plane
    uploaded = {name: await cp.upload(name, "1.0.0", wasm) for name, wasm in FUNCTIONS.items()}
    agent = await spawn_agent(
        cp,
        tmp_path / "edge-1",
        enrollment_token=await cp.enrollment_token(),
        args=("--function-timeout", "1"),
    )
    agent_processes.append(agent)
    await converged(cp, [agent.node_id], State.want(0, **dict.fromkeys(FUNCTIONS, "1.0.0")))
    base = agent.gateway

    # Health and the function list.
    status, health = await get(f"{base}/healthz")
    assert (status, health) == (200, {"status": "ok", "runtime": "wasmtime", "functions": 6})
    status, listing = await get(f"{base}/functions")
    assert status == 200
    assert listing == {
        "functions": [
            {"name": name, "version": "1.0.0", "sha256": uploaded[name]["sha256"]}
            for name in sorted(FUNCTIONS)
        ]
    }

    # The body goes to stdin, stdout comes back.
    big = os.urandom(1024 * 1024)
    assert (await gateway_call(base, "echo", big))[:2] == (200, big)
    assert (await gateway_call(base, "echo", b""))[:2] == (200, b"")

    # The request as CGI variables; the Authorization header never reaches a function.
    status, raw, _ = await gateway_call(
        f"{base}",
        "env?x=1&y=two%20words&z=a%2Bb",
        b"abc",
        headers={
            "Authorization": "Bearer top-secret-token",
            "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
            "Proxy": "http://attacker.example",
            "Content-Type": "text/plain",
            "X-Request-Id": "req-42",
        },
    )
    assert status == 200
    env = parse_environ(raw)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["QUERY_STRING"] == "x=1&y=two%20words&z=a%2Bb"  # as sent
    assert env["PATH_INFO"] == "/functions/env"
    assert env["CONTENT_LENGTH"] == "3"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["HTTP_X_REQUEST_ID"] == "req-42"
    assert not [key for key in env if "AUTHORIZATION" in key]
    assert b"top-secret-token" not in raw and b"cHJveHk6c2VjcmV0" not in raw
    assert "HTTP_PROXY" not in env  # httpoxy

    # Failing functions: 502 with the envelope; unknown ones 404.
    for name, code in (
        ("trap", "FUNCTION_TRAP"),
        ("exit3", "FUNCTION_EXIT"),
        ("loop", "FUNCTION_TIMEOUT"),
    ):
        status, _, body = await gateway_call(base, name)
        assert status == 502, (name, body)
        error = check_envelope(body, code)
        assert error["details"]["function"] == name  # type: ignore[index]
    status, _, body = await gateway_call(base, "exit3")
    assert check_envelope(body, "FUNCTION_EXIT")["details"]["exit_code"] == 3  # type: ignore[index]
    status, _, body = await gateway_call(base, "nope")
    assert status == 404
    check_envelope(body, "FUNCTION_NOT_FOUND")
    status, body = await get(f"{base}/elsewhere")
    assert status == 404
    check_envelope(body, "NOT_FOUND")

    # Endless functions running: the gateway answers, other functions run, and the
    # agent keeps syncing (a release published meanwhile is taken).
    loops = [asyncio.create_task(gateway_call(base, "loop")) for _ in range(3)]
    assert (await get(f"{base}/healthz"))[0] == 200
    assert (await gateway_call(base, "echo", b"still here"))[:2] == (200, b"still here")
    assert not all(task.done() for task in loops)  # answered while the loops still ran
    await cp.upload("hello", "1.1.0", hello("v2"))
    want = State.want(0, **{**dict.fromkeys(FUNCTIONS, "1.0.0"), "hello": "1.1.0"})
    await converged(cp, [agent.node_id], want)
    for status, _, body in await asyncio.gather(*loops):
        assert status == 502
        check_envelope(body, "FUNCTION_TIMEOUT")
    assert (await gateway_call(base, "hello"))[:2] == (200, greeting("v2"))
    assert agent.process.poll() is None, agent.log()
    assert await agent.stop() == 0, agent.log()
