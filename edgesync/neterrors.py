"""Saying what failed when a server cannot be reached: one wording for every client.

The operator CLI (``http.client``) and the agent (aiohttp) fail in different
exception types for the same fault; users should read the same sentence either
way, in the CLI's form ``cannot reach http://host:port: connection refused``,
never a library's ``Cannot connect to host … ssl:default``. Only the URL's origin
is ever shown: a signed download URL carries its signature in the query.
"""

from __future__ import annotations

import re
import socket
import ssl
from urllib.parse import urlsplit

from edgesync.errors import EdgesyncError

# By class name, so that the operator CLI never imports aiohttp to describe its errors.
_BY_NAME = {
    "ServerDisconnectedError": "the server closed the connection without answering",
    "RemoteDisconnected": "the server closed the connection without answering",
    "ClientPayloadError": "the response was cut off",
    "IncompleteRead": "the response was cut off",
    "ConnectionTimeoutError": "timed out connecting",
    "SocketTimeoutError": "timed out waiting for an answer",
    "ServerTimeoutError": "timed out waiting for an answer",
    "BadStatusLine": "the answer is not HTTP (is the URL's scheme right?)",
    "InvalidURL": "the URL is not valid",
    "InvalidUrlClientError": "the URL is not valid",
    "NonHttpUrlClientError": "the URL is not http:// or https://",
}


_SSL_NOISE = re.compile(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$")


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: no path, query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else url.split("?")[0]


def describe(exc: BaseException) -> str:
    """A short lower-case reason for a network failure, the same for every library."""
    causes = _causes(exc)
    for cause in causes:
        reason = _reason(cause)
        if reason:
            return reason
    # Innermost first: library wrappers copy a less useful strerror from what they wrap.
    for cause in reversed(causes):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def unreachable(url: str, exc: BaseException) -> EdgesyncError:
    """The error both clients raise when ``url``'s server cannot be talked to (retryable)."""
    return EdgesyncError(
        f"cannot reach {origin(url)}: {describe(exc)}", code="UNREACHABLE", retryable=True
    )


def file_problem(exc: OSError) -> str:
    """Why a certificate, key or CA file could not be loaded, in words."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        text = reason.replace("_", " ")  # OpenSSL's NO_CERTIFICATE_OR_CRL_FOUND, …
    else:  # "[SSL] PEM lib (_ssl.c:3905)": OpenSSL's words without the C source line
        text = _SSL_NOISE.sub("", exc.strerror or str(exc)) or type(exc).__name__
    text = text.lower()
    if text in ("pem lib", "no start line"):
        return "not a PEM certificate and key, or the key does not match the certificate"
    return text


def answered_error(url: str, status: int, body: object) -> EdgesyncError:
    """The error a server answered; an answer without the envelope names who answered."""
    error = EdgesyncError.from_envelope(status, body)
    if error.code == "BAD_RESPONSE":
        error.message = (
            f"{origin(url)} answered HTTP {status} without an error envelope:"
            " is it an edgesync control plane?"
        )
    return error


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it wraps (aiohttp keeps the OS error in attributes)."""
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or current in chain or len(chain) > 8:
            continue
        chain.append(current)
        for attribute in ("certificate_error", "os_error"):
            inner = getattr(current, attribute, None)
            if isinstance(inner, BaseException):
                pending.append(inner)
        pending += [current.__cause__, current.__context__]
    return chain


def _reason(exc: BaseException) -> str | None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "WRONG_VERSION_NUMBER":
            return "TLS handshake failed: the server does not speak TLS (try http://)"
        return f"TLS handshake failed ({exc.reason or exc})"
    name = _BY_NAME.get(type(exc).__name__)
    if name:
        return name
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "the server reset the connection"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return None
