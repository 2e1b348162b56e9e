"""Frames between the agent and its WasmEdge workers (stdlib only).

A frame is an 8-byte header (little-endian uint32 lengths of the JSON object and of
the binary payload), the JSON object, then the payload: a request's payload is the
call's stdin, a reply's is stdout (``stdout_len`` bytes, on success only) followed by
the end of stderr. The blocking helpers here serve the worker and the agent's
synchronous compile workers; the agent's event loop reads the same frames from
asyncio streams (:mod:`agent.runtime.wasmedge.pool`).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct("<II")
#: How much of a failed function's stderr comes back (its end).
STDERR_KEEP = 64 * 1024


def encode(message: dict[str, Any], payload: bytes = b"") -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body), len(payload)) + body + payload


def decode_header(header: bytes | bytearray) -> tuple[int, int]:
    body_len, payload_len = HEADER.unpack(header)
    return body_len, payload_len


def write_frame(channel: socket.socket, message: dict[str, Any], payload: bytes = b"") -> None:
    channel.sendall(encode(message, payload))


def _read_exactly(channel: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = channel.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def read_frame(channel: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """The next frame, or None at end of stream."""
    header = _read_exactly(channel, HEADER.size)
    if header is None:
        return None
    body_len, payload_len = decode_header(header)
    body = _read_exactly(channel, body_len)
    payload = _read_exactly(channel, payload_len) if payload_len else b""
    if body is None or payload is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message, payload
