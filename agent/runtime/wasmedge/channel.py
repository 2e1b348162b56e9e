"""The agent's end of a worker's socketpair, for the event loop: whole frames.

An :class:`asyncio.Protocol` rather than asyncio streams: a reply is parsed where its
bytes arrive and hands its frame to the one waiting call, with no reader coroutines
in between (the round trip is most of what a call costs the agent).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from agent.runtime.wasmedge.protocol import HEADER, decode_header, encode

Frame = tuple[dict[str, Any], bytes]


class FrameChannel(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Frame] | None = None
        self._transport: asyncio.Transport | None = None
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, sock: socket.socket) -> FrameChannel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_connection(cls, sock=sock)
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = ConnectionResetError("the worker closed its channel")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def _deliver(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or len(self._buffer) < HEADER.size:
            return
        body_len, payload_len = decode_header(self._buffer[: HEADER.size])
        end = HEADER.size + body_len + payload_len
        if len(self._buffer) < end:
            return
        body = self._buffer[HEADER.size : HEADER.size + body_len]
        payload = bytes(self._buffer[HEADER.size + body_len : end])
        del self._buffer[:end]
        self._waiter = None
        waiter.set_result((json.loads(body), payload))

    async def next_frame(self) -> Frame:
        """The next frame the worker sends (its hello, or the reply to a request)."""
        if self._lost is not None:
            raise self._lost
        self._waiter = asyncio.get_running_loop().create_future()
        self._deliver()
        return await self._waiter

    async def request(self, message: dict[str, Any], payload: bytes) -> Frame:
        if self._lost is not None or self._transport is None:
            raise ConnectionResetError("the worker's channel is closed")
        self._transport.write(encode(message, payload))
        return await self.next_frame()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
