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
from typing import Any, BinaryIO

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


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame from a buffered reader over the socket, or None at end of stream.

    Buffered (``socket.makefile("rb")``): one ``recv`` usually brings the whole frame.
    """
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    body_len, payload_len = decode_header(header)
    body = stream.read(body_len)
    payload = stream.read(payload_len) if payload_len else b""
    if len(body) < body_len or len(payload) < payload_len:
        return None
    message: dict[str, Any] = json.loads(body)
    return message, payload
