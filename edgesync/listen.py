"""Ports claimed before anything else happens.

``edgesync serve`` and ``edgesync agent`` claim their ports first: a port that is
taken then fails the start before a data dir, a token, a database or an enrolment
exists. :func:`bind_tcp` gives listening sockets to hand to aiohttp
(``web.SockSite``); :func:`reserve_tcp` binds without listening, for a server that
binds its own sockets later (aiohttp's ``TCPSite``, amqtt): both sides set
``SO_REUSEADDR`` and the reservation never listens, so Linux lets that server bind
and listen on the reserved port while it keeps everyone else off it. Both cover
every address the host name resolves to, as ``TCPSite`` does.
"""

from __future__ import annotations

import errno
import socket
from contextlib import suppress

from edgesync.errors import EdgesyncError

BACKLOG = 128


class AddressUnavailable(EdgesyncError):
    code = "ADDRESS_IN_USE"


def bind_tcp(host: str | None, port: int, what: str = "listen") -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (all interfaces when empty)."""
    return _bind(host, port, what, listen=True)


def reserve_tcp(host: str | None, port: int, what: str = "listen") -> list[socket.socket]:
    """Bound, not listening: ``host:port`` is known free and kept so until closed."""
    return _bind(host, port, what, listen=False)


def _bind(host: str | None, port: int, what: str, *, listen: bool) -> list[socket.socket]:
    shown = f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise EdgesyncError(
            f"cannot {what} on {shown}: unknown host", code="ADDRESS_NOT_AVAILABLE"
        ) from exc
    sockets: list[socket.socket] = []
    seen: set[tuple[object, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, *address[:2]) in seen:
                continue
            seen.add((family, *address[:2]))
            if port == 0 and sockets:
                break  # an ephemeral port is one port: its first address only
            sockets.append(_socket(family, kind, proto, address, listen))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _unavailable(what, shown, exc) from exc
    return sockets


def _socket(
    family: int, kind: int, proto: int, address: tuple[object, ...], listen: bool
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with suppress(OSError):  # v4 gets its own socket, as aiohttp does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unavailable(what: str, shown: str, exc: OSError) -> EdgesyncError:
    if exc.errno == errno.EADDRINUSE:
        return AddressUnavailable(f"cannot {what} on {shown}: address already in use")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return EdgesyncError(
            f"cannot {what} on {shown}: permission denied (ports below 1024 need privileges)",
            code="PERMISSION_DENIED",
        )
    reason = (exc.strerror or str(exc)).lower()
    return EdgesyncError(f"cannot {what} on {shown}: {reason}", code="ADDRESS_NOT_AVAILABLE")


def bound_port(sockets: list[socket.socket]) -> int:
    port: int = sockets[0].getsockname()[1]
    return port
