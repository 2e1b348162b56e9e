"""Every failure of an edgesync HTTP server, rendered as the one error envelope.

Used by both servers (the control plane and the agent's gateway): one
middleware turns whatever a handler raises into an :class:`EdgesyncError`
response, and :func:`protocol_error` maps the failures aiohttp detects while it
parses a request (before any middleware runs; ``edgesync.http_server``
renders those) to the same vocabulary.

No message built here quotes the request: aiohttp's own parser messages echo the
offending bytes (a whole ``Authorization`` header, say), so only the exception
class decides what the client and the log are told.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    DecompressSizeError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from edgesync.errors import (
    EdgesyncError,
    ExpectationFailed,
    HeadersTooLarge,
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Maps a server-specific exception (an unreachable database, say) to an error,
# or returns None to leave it to the generic rules.
Translate = Callable[[Exception, web.Request], EdgesyncError | None]

# What went wrong, by parser exception class, most specific first: a fixed text
# for the client and the log instead of aiohttp's message.
_PARSER_REASONS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (DecompressSizeError, "compressed body expands beyond the limit"),
    (ContentEncodingError, "body does not match its Content-Encoding"),
    (TransferEncodingError, "malformed chunked Transfer-Encoding"),
    (ContentLengthError, "body does not match its Content-Length"),
    (InvalidURLError, "malformed request target"),
    (BadStatusLine, "malformed request line"),
    (InvalidHeader, "malformed header"),
    (BadHttpMessage, "malformed HTTP message"),
)


def envelope_response(error: EdgesyncError) -> web.Response:
    return web.Response(
        body=json.dumps(error.envelope(), separators=(",", ":")).encode(),
        status=error.status,
        content_type="application/json",
        charset="utf-8",
        headers=error.headers or None,
    )


def protocol_error(exc: BaseException | None) -> EdgesyncError | None:
    """The error for a request aiohttp could not parse or whose body it could not
    read (``RequestPayloadError`` wraps the parser's exception); None otherwise."""
    if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__
    elif isinstance(exc, RequestPayloadError):
        return MalformedRequest("the request body could not be read")
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower()
    ):
        return HeadersTooLarge("request line or header fields are too large")
    if not isinstance(exc, HttpProcessingError):
        return None
    for kind, reason in _PARSER_REASONS:
        if isinstance(exc, kind):
            return MalformedRequest(f"malformed request: {reason}", details={"reason": reason})
    return MalformedRequest("malformed request")


def http_exception_error(exc: web.HTTPException, request: web.BaseRequest) -> EdgesyncError | None:
    """aiohttp's own HTTP exceptions (routing, body size) as errors; None below 400."""
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no route for {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        error.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return error
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("request body exceeds the configured limit")
    if isinstance(exc, web.HTTPExpectationFailed):
        return ExpectationFailed("only Expect: 100-continue is supported")
    if exc.status < 400:
        return None
    return EdgesyncError(exc.reason, code=exc.reason.upper().replace(" ", "_"), status=exc.status)


def error_middleware(log: logging.Logger, translate: Translate | None = None) -> Middleware:
    """A middleware rendering every exception as the envelope; bugs are logged
    (with their traceback, never with request headers) and become 500 INTERNAL."""

    @web.middleware
    async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgesyncError as exc:
            return envelope_response(exc)
        except web.HTTPException as exc:
            error = http_exception_error(exc, request)
            if error is None:
                raise  # redirects and the like are answers, not errors
            return envelope_response(error)
        except ConnectionResetError:
            raise  # the client is gone (or was cut as too slow): nothing to answer
        except Exception as exc:
            error = translate(exc, request) if translate else None
            if error is not None:
                return envelope_response(error)
            error = protocol_error(exc)
            if error is None:
                log.exception("unhandled error in %s %s", request.method, request.rel_url.raw_path)
                return envelope_response(InternalError("internal server error"))
            # The body could not be read: the rest of it cannot be skipped reliably,
            # so this connection ends with this answer.
            response = envelope_response(error)
            response.force_close()
            return response

    return render_errors
