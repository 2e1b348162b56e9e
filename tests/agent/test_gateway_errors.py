"""The agent's gateway renders every failure as the control plane does: one
middleware (``edgesync.http_errors``), one server (``EnvelopeAppRunner``).

A stand-in runtime is enough here: what is tested is the HTTP layer, over a
raw socket so that bytes aiohttp's client would refuse reach the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import pytest
from aiohttp import web

from agent.gateway import make_gateway
from agent.runtime.base import FunctionNotDeployed, Limits, Runtime
from edgesync.http_server import EnvelopeAppRunner
from edgesync.protocol import FunctionRef


class Broken:
    """A runtime whose ``boom`` raises a bug and whose other functions are absent."""

    name = "stand-in"

    def functions(self) -> dict[str, FunctionRef]:
        return {}

    async def invoke(self, name: str, stdin: bytes, env: Mapping[str, str], limits: Any) -> Any:
        if name == "boom":
            raise RuntimeError("secret-internal-detail")
        raise FunctionNotDeployed(f"function {name} is not deployed")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    runner = EnvelopeAppRunner(make_gateway(cast(Runtime, Broken()), Limits()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, data: bytes) -> tuple[int, str, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    content_type = next(
        (
            line.split(":", 1)[1].strip()
            for line in lines
            if line.lower().startswith("content-type")
        ),
        "",
    )
    return int(lines[0].split(" ")[1]), content_type, json.loads(body)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (
            b"POST /functions/x HTTP/1.1\r\nHost: g\r\nX-Key: s3cret\x00\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (b"GET /nope HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n", 404, "NOT_FOUND"),
        (
            b"PUT /functions HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            b"POST /functions/missing HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n",
            404,
            "FUNCTION_NOT_FOUND",
        ),
        (
            b"POST /functions/boom HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n",
            500,
            "INTERNAL",
        ),
        (
            b"POST /functions/x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
    ],
)
async def test_gateway_errors_are_envelopes(port: int, raw: bytes, status: int, code: str) -> None:
    got, content_type, body = await exchange(port, raw)
    assert (got, body["error"]["code"]) == (status, code)
    assert content_type.startswith("application/json")
    assert set(body["error"]) == {"code", "message", "details", "retryable"}
    assert "s3cret" not in json.dumps(body) and "secret-internal-detail" not in json.dumps(body)
