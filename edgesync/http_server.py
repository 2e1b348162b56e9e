"""The HTTP server under both edgesync servers: envelopes and deadlines below the app.

aiohttp answers requests it cannot parse (a NUL byte in a header, a bad chunk
size, ``Content-Length`` beside ``Transfer-Encoding``, a header over 8 KiB) from
its protocol handler, before any middleware runs, with a ``text/plain`` body that
quotes the offending bytes and a logged traceback that quotes them again. It also
waits for headers and bodies as long as a client cares to trickle them.

:class:`EnvelopeAppRunner` is an ``aiohttp.web.AppRunner`` whose connections are
served by :class:`EnvelopeRequestHandler`: parse errors become the JSON error
envelope and one log line that names the error class only, and
:class:`ReadDeadlines` bound how long a client may take to send its headers and
its body. aiohttp has no public hook for either (aio-libs/aiohttp#3287), so the
runner swaps in the handler class where ``web.Server`` builds its protocols.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler

from edgesync.errors import InternalError, RequestTimeout
from edgesync.http_errors import envelope_response, http_exception_error, protocol_error

log = logging.getLogger("edgesync.http")

_Handle = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ReadDeadlines:
    """How long a client may take to send one request (Apache's mod_reqtimeout).

    The header block must be complete ``header_seconds`` after its first byte. A
    body gets ``body_seconds``, plus one second for every ``body_min_rate`` bytes
    that arrived: a slow link uploading steadily is fine, a trickle is cut.
    ``keepalive_seconds`` closes idle connections (and ones that never send).
    """

    header_seconds: float = 15.0
    body_seconds: float = 30.0
    body_min_rate: int = 1024
    keepalive_seconds: float = 75.0

    def __post_init__(self) -> None:
        if min(self.header_seconds, self.body_seconds, self.keepalive_seconds) <= 0:
            raise ValueError("read deadlines must be positive")
        if self.body_min_rate < 1:
            raise ValueError("the minimum body rate must be at least 1 byte a second")


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's protocol handler, with envelope errors and read deadlines."""

    def __init__(self, manager: web.Server, *, deadlines: ReadDeadlines, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        self._header_started: float | None = None  # first byte of an unparsed request
        self._body: StreamReader | None = None  # the body still arriving
        self._body_started = 0.0
        self._body_bytes = 0
        self._deadline_timer: asyncio.TimerHandle | None = None

    # -- parse errors -----------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        error = protocol_error(exc)
        if error is None:
            # A failure outside the app's middleware (or a handler timeout): a bug.
            if self.transport is not None:
                log.error("request from %s failed outside the app", request.remote, exc_info=exc)
            error = InternalError("internal server error")
        else:
            # The class only: aiohttp's message quotes the bytes it refused.
            log.info("refused a malformed request from %s (%s)", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response is sent already; closing the connection")
        response = envelope_response(error)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # aiohttp logs a body it could not drain after the answer (a bad chunk, gzip
        # garbage) as "Unhandled exception" with a traceback quoting the bytes.
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException) and protocol_error(exc) is not None:
            log.info("closed a connection whose body could not be read (%s)", type(exc).__name__)
            return
        super().log_exception(*args, **kwargs)

    # -- read deadlines ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        parsed_before = self._request_count
        super().data_received(data)
        now = self._loop.time()
        if self._request_count > parsed_before:  # a header block completed
            self._header_started = None
            payload = self._messages[-1][1] if self._messages else EMPTY_PAYLOAD
            self._body = None if payload is EMPTY_PAYLOAD or payload.is_eof() else payload
            self._body_started, self._body_bytes = now, 0
        elif self._body is not None:
            self._body_bytes += len(data)
            if self._body.is_eof():
                self._body = None
        elif self._header_started is None and data:
            self._header_started = now
        self._arm_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        super().connection_lost(exc)

    def _deadline(self) -> float | None:
        if self._header_started is not None:
            return self._header_started + self._deadlines.header_seconds
        if self._body is not None and not self._body.is_eof():
            rate_allowance = self._body_bytes / self._deadlines.body_min_rate
            return self._body_started + self._deadlines.body_seconds + rate_allowance
        return None

    def _arm_deadline(self) -> None:
        deadline = self._deadline()
        if self._deadline_timer is not None:
            if deadline is not None and self._deadline_timer.when() <= deadline:
                return  # the pending check comes first and re-arms itself
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if deadline is not None and self.transport is not None:
            self._deadline_timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        deadline = self._deadline()
        if deadline is None or self.transport is None:
            return
        if self._body is not None and self._reading_paused:
            # The app is not reading: the wait is ours, not the client's.
            self._body_started, self._body_bytes = self._loop.time(), 0
        elif self._loop.time() >= deadline:
            self._cut_slow_client()
            return
        self._arm_deadline()

    def _cut_slow_client(self) -> None:
        phase = "headers" if self._header_started is not None else "body"
        log.info("closed a connection from a client too slow to send its %s", phase)
        transport = self.transport
        idle = self._current_request is None and not self._messages
        if transport is not None and idle:
            # Nothing of ours is on the wire yet: say why before closing.
            error = RequestTimeout(f"the request {phase} did not arrive in time")
            body = json.dumps(error.envelope(), separators=(",", ":")).encode()
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\n"
                b"Content-Type: application/json; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        self._header_started = self._body = None
        self.force_close()


class _EnvelopeServer(web.Server):
    """``web.Server`` building :class:`EnvelopeRequestHandler` protocols."""

    deadlines = ReadDeadlines()

    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(
            self, deadlines=self.deadlines, loop=self._loop, **self._kwargs
        )


class EnvelopeAppRunner(web.AppRunner):
    """An ``AppRunner`` (same arguments) whose server renders parse errors as the
    envelope and enforces ``deadlines``; use it where ``web.run_app`` would be."""

    def __init__(
        self, app: web.Application, *, deadlines: ReadDeadlines | None = None, **kwargs: Any
    ) -> None:
        self._deadlines = deadlines or ReadDeadlines()
        kwargs.setdefault("keepalive_timeout", self._deadlines.keepalive_seconds)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EnvelopeServer  # the same object; only __call__ differs
        server.deadlines = self._deadlines  # type: ignore[attr-defined]
        server.request_handler = _outside_the_middlewares(server.request_handler)
        return server


def _outside_the_middlewares(handle: _Handle) -> _Handle:
    """The app's handler, with the HTTP exceptions aiohttp raises before its
    middlewares run rendered as the envelope: an ``Expect`` other than
    ``100-continue`` is a 417 whose text would quote the header."""

    async def handle_request(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handle(request)
        except web.HTTPException as exc:
            error = http_exception_error(exc, request)
            if error is None:
                raise
            return envelope_response(error)

    return handle_request


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    deadlines: ReadDeadlines | None = None,
    shutdown_timeout: float = 10.0,
) -> None:
    """``web.run_app`` on an :class:`EnvelopeAppRunner`: serve until SIGINT or
    SIGTERM, then close connections and run the app's cleanup contexts. Errors
    while starting (a cleanup context failing, a busy port) propagate."""

    async def serve() -> None:
        runner = EnvelopeAppRunner(
            app,
            deadlines=deadlines,
            access_log=None,  # the app logs one structured line per request itself
            handle_signals=True,
            shutdown_timeout=shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    with suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(serve())
