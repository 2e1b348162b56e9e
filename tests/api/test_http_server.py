"""Below the app: bytes aiohttp's parser refuses, and clients too slow to finish.

These requests never reach a middleware, and aiohttp's client would refuse to
send most of them, so the real app is served by ``EnvelopeAppRunner`` on a
loopback port and spoken to over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from api_support import ADMIN_TOKEN, check_error

from appliance.app import make_app
from appliance.config import ServeConfig
from edgesync.http_server import EnvelopeAppRunner, ReadDeadlines

# Generous bounds for waiting only (never asserted as timings): the server's
# deadlines below are 1 s; a loaded machine may take far longer to act on them.
WAIT = 30.0
FAST = ReadDeadlines(header_seconds=1.0, body_seconds=1.0, body_min_rate=1000)

TOKEN = ADMIN_TOKEN.encode()


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    config = ServeConfig(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, bcrypt_rounds=4)
    runner = EnvelopeAppRunner(make_app(config), deadlines=FAST, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(method: str, path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    start = f"{method} {path} HTTP/1.1\r\nHost: edgesync\r\n".encode()
    return start + headers + b"Connection: close\r\n\r\n" + body


def split(response: bytes) -> tuple[int, dict[str, str], str]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body.decode()


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter()
    return "\n".join(
        record.getMessage()
        + (formatter.formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )


JSON_POST = b"Authorization: Bearer " + TOKEN + b"\r\nContent-Type: application/json\r\n"

# (case, request bytes, expected status, expected code)
REFUSED = [
    (
        "NUL byte in Authorization",
        request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"\x00x\r\n"),
        400,
        "MALFORMED_REQUEST",
    ),
    (
        "control byte in Authorization",
        request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"\x01\r\n"),
        400,
        "MALFORMED_REQUEST",
    ),
    (
        "header over 8 KiB",
        request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"A" * 9000 + b"\r\n"),
        431,
        "HEADERS_TOO_LARGE",
    ),
    (
        "too many headers",
        request("GET", "/api/v1/nodes", b"".join(b"X-%d: v\r\n" % i for i in range(200))),
        431,
        "HEADERS_TOO_LARGE",
    ),
    (
        "request line over 8 KiB",
        request("GET", "/api/v1/nodes?" + "q" * 9000, b"Authorization: Bearer " + TOKEN + b"\r\n"),
        431,
        "HEADERS_TOO_LARGE",
    ),
    (
        "bad chunk size",
        request(
            "POST",
            "/api/v1/enrollment-tokens",
            JSON_POST + b"Transfer-Encoding: chunked\r\n",
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        400,
        "MALFORMED_REQUEST",
    ),
    (
        "Content-Length beside Transfer-Encoding",
        request(
            "POST",
            "/api/v1/enrollment-tokens",
            JSON_POST + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
            b"2\r\n{}\r\n0\r\n\r\n",
        ),
        400,
        "MALFORMED_REQUEST",
    ),
    (
        "undecodable Content-Encoding",
        request(
            "POST",
            "/api/v1/enrollment-tokens",
            JSON_POST + b"Content-Encoding: br\r\nContent-Length: 4\r\n",
            b"junk",
        ),
        400,
        "MALFORMED_REQUEST",
    ),
    (
        "gzip garbage",
        request(
            "POST",
            "/api/v1/enrollment-tokens",
            JSON_POST + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n",
            b"0123456789",
        ),
        400,
        "MALFORMED_REQUEST",
    ),
    (
        "garbage request line",
        b"\x16\x03\x01 hello " + TOKEN + b"\r\n\r\n",
        400,
        "MALFORMED_REQUEST",
    ),
    ("space in the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (
        "Expect other than 100-continue",
        request("POST", "/api/v1/enrollment-tokens", JSON_POST + b"Expect: " + TOKEN + b"\r\n"),
        417,
        "EXPECTATION_FAILED",
    ),
    (
        "two Content-Lengths",
        request(
            "POST",
            "/api/v1/enrollment-tokens",
            JSON_POST + b"Content-Length: 2\r\nContent-Length: 3\r\n",
            b"{}",
        ),
        400,
        "MALFORMED_REQUEST",
    ),
    ("two Hosts", request("GET", "/healthz", b"Host: other\r\n"), 400, "MALFORMED_REQUEST"),
    ("no Host", b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "MALFORMED_REQUEST"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (
        "folded header",
        request("GET", "/api/v1/nodes", b"X-A: 1\r\n Authorization: Bearer " + TOKEN + b"\r\n"),
        400,
        "MALFORMED_REQUEST",
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "code"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
async def test_unparseable_requests_get_the_envelope_and_leak_nothing(
    port: int, caplog: pytest.LogCaptureFixture, raw: bytes, status: int, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await exchange(port, raw)
    got_status, headers, body = split(response)
    assert headers["content-type"] == "application/json; charset=utf-8", response
    check_error(got_status, body, status, code)
    assert TOKEN not in response
    assert ADMIN_TOKEN not in logged_text(caplog)


@pytest.mark.parametrize("odd", [b"\xe9", b"\xff\xfe", b"\xc3\xa9", b"\x80"])
async def test_non_ascii_bytes_in_authorization_are_401(
    port: int, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    # aiohttp passes these on (as surrogate escapes): the app must refuse them itself.
    caplog.set_level(logging.DEBUG)
    raw = request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + odd + b"\r\n")
    status, _, body = split(await exchange(port, raw))
    check_error(status, body, 401, "UNAUTHORIZED")
    assert ADMIN_TOKEN not in logged_text(caplog)


async def test_a_sane_request_still_works(port: int) -> None:
    raw = request("GET", "/api/v1/nodes", b"Authorization: Bearer " + TOKEN + b"\r\n")
    status, _, body = split(await exchange(port, raw))
    assert status == 200, body


async def test_slowloris_headers_are_cut_with_408(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/nodes HTTP/1.1\r\nHost: edgesync\r\nX-Slow: ")
    answer = b""
    try:
        # One header byte at a time, never finishing: the server must give up first.
        for _ in range(int(WAIT / 0.1)):
            writer.write(b"a")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(65536), 0.1)
            if reader.at_eof():
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    assert reader.at_eof() or answer, "the server kept waiting for the headers"
    if answer:
        status, _, body = split(answer)
        check_error(status, body, 408, "REQUEST_TIMEOUT")


async def test_a_trickled_body_is_cut(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/enrollment-tokens HTTP/1.1\r\nHost: edgesync\r\n"
        + JSON_POST
        + b"Content-Length: 100000\r\n\r\n{"
    )
    closed = False
    try:
        for _ in range(int(WAIT / 0.1)):
            writer.write(b" ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(65536), 0.1)
            if reader.at_eof():
                closed = True
                break
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    assert closed, "the server kept reading a body trickled at 10 bytes a second"
