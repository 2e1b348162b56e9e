"""A real ``edgesync serve`` process under hostile HTTP: every answer is a 4xx
envelope, the server log (at DEBUG) never holds the admin token or a traceback,
slow clients are cut, and SIGTERM still ends it cleanly.

Raw sockets: HTTP clients refuse to send most of these bytes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ADMIN_TOKEN
from .support import Edgesync, Server, start_server

TOKEN = ADMIN_TOKEN.encode()
WAIT = 30.0  # bounds waiting only


@pytest.fixture
def serve(installed_edgesync: Edgesync, tmp_path: Path) -> Iterator[Server]:
    env = {
        **installed_edgesync.env,
        "EDGESYNC_SERVE_LOG_LEVEL": "debug",
        "EDGESYNC_SERVE_HEADER_TIMEOUT": "1",
        "EDGESYNC_SERVE_BODY_TIMEOUT": "1",
    }
    server = start_server(
        Edgesync("installed", installed_edgesync.argv, env), tmp_path, ADMIN_TOKEN
    )
    try:
        yield server
    finally:
        server.stop()


def exchange(server: Server, data: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def request(method: str, path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body and b"chunked" not in headers else b""
    start = f"{method} {path} HTTP/1.1\r\nHost: edgesync\r\n".encode()
    return start + headers + length + b"Connection: close\r\n\r\n" + body


AUTH = b"Authorization: Bearer " + TOKEN + b"\r\n"
JSON = AUTH + b"Content-Type: application/json\r\n"
ATTACKS = [
    request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"\x00\r\n"),
    request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"\xe9\r\n"),
    request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"A" * 9000 + b"\r\n"),
    request(
        "POST",
        "/api/v1/enrollment-tokens",
        JSON + b"Transfer-Encoding: chunked\r\n",
        b"zz\r\n{}\r\n0\r\n\r\n",
    ),
    request(
        "POST",
        "/api/v1/enrollment-tokens",
        JSON + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
        b"2\r\n{}\r\n0\r\n\r\n",
    ),
    request("POST", "/api/v1/enrollment-tokens", JSON + b"Content-Encoding: gzip\r\n", b"x" * 10),
    request("POST", "/api/v1/enrollment-tokens", JSON, b"[" * 100_000 + b"]" * 100_000),
    request("POST", "/api/v1/enrollment-tokens", JSON, b'{"region": "\\ud800"}'),
    request("POST", "/api/v1/schemas", JSON, b'{"version": 9223372036854775808, "up_sql": "x"}'),
    request("GET", "/api/v1/nodes/00000000-0000-0000-0000-000000000000%2Fdownload?sig=1"),
    request("GET", "/api/v1/functions/00000000-0000-0000-0000-000000000000%2Fdownload?sig=1"),
    request("POST", "/api/v1/functions", AUTH + b"Content-Type: multipart/form-data\r\n", b"junk"),
    request(
        "POST",
        "/api/v1/functions",
        AUTH + b"Content-Type: multipart/form-data; boundary=b\r\n",
        b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx',
    ),
]


def test_hostile_requests_get_envelopes_and_leave_no_secret_in_the_log(serve: Server) -> None:
    for attack in ATTACKS:
        response = exchange(serve, attack)
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        assert 400 <= status < 500, (attack[:60], response[:300])
        assert b"application/json" in head, (attack[:60], response[:300])
        assert set(json.loads(body)["error"]) == {"code", "message", "details", "retryable"}
        assert TOKEN not in response
    # A slowloris: one header byte at a time is cut (after --header-timeout 1).
    host, port = serve.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(b"GET /api/v1/nodes HTTP/1.1\r\nHost: edgesync\r\nX-Slow: ")
        sock.settimeout(0.2)
        answer, deadline = b"", time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not chunk:
                break
            answer += chunk
        assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert serve.stop() == 0
    log = serve.log()
    assert ADMIN_TOKEN not in log
    assert "Traceback" not in log, log[-3000:]
