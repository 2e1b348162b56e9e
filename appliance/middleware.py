"""Middlewares: one structured log line per request, metrics, errors, auth.

Order (outermost first): ``fast_poll`` answers a converged node's poll from
memory (``appliance.fast_poll``) and hands everything else on, ``observe``
times and logs whatever comes back (a 304 poll is counted, not logged),
``render_errors`` (shared with the agent's gateway: ``edgesync.http_errors``)
turns every exception into the error envelope, ``refuse_nul`` turns away a NUL
in the path or query, and ``authenticate`` sets the caller, by the access rule of
the route the request matched.
"""

from __future__ import annotations

import enum
import json
import logging
import time

from aiohttp import web

from appliance.api.common import PRINCIPAL
from appliance.artifacts import ArtifactStoreUnavailable
from appliance.fast_poll import SYNC_ROUTE
from appliance.services import METRICS, SERVICES
from appliance.store.db import DatabaseUnavailable
from edgesync.errors import EdgesyncError, MalformedRequest, ServiceUnavailable
from edgesync.http_errors import Handler, error_middleware

access_log = logging.getLogger("edgesync.access")
error_log = logging.getLogger("edgesync.errors")


class Access(enum.Enum):
    """Who may call a route."""

    BEARER = "bearer"  # a valid admin or node token (every route not listed below)
    PUBLIC = "public"  # anyone
    SIGNED = "signed"  # a bearer token, or else a signed URL the handler verifies
    ROTATION = "rotation"  # a bearer token; a rotated-away one may repeat its rotation


# By (method, route template): decided on the route the router matched, never on
# the raw path, which percent-encoding (``%2Fdownload``) makes say anything.
ROUTE_ACCESS: dict[tuple[str, str], Access] = {
    ("POST", "/api/v1/nodes/register"): Access.PUBLIC,
    ("GET", "/api/v1/openapi.json"): Access.PUBLIC,
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/readyz"): Access.PUBLIC,
    ("GET", "/metrics"): Access.PUBLIC,
    ("GET", "/api/v1/functions/{function_id}/download"): Access.SIGNED,
    ("POST", "/api/v1/nodes/{node_id}/token/rotate"): Access.ROTATION,
}


def route_template(request: web.Request) -> str | None:
    """The matched route's template, or None for a request no route matched."""
    if request.match_info.http_exception is not None:
        return None
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def route_access(request: web.Request) -> Access | None:
    """The access rule of the matched route (None: unmatched, a 404 or 405 follows)."""
    template = route_template(request)
    if template is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return ROUTE_ACCESS.get((method, template), Access.BEARER)


@web.middleware
async def fast_poll(request: web.Request, handler: Handler) -> web.StreamResponse:
    svc = request.app.get(SERVICES)
    if svc is not None:
        answer = svc.fast_poll.answer(request)
        if answer is not None:
            return answer
    return await handler(request)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        # The template, never the raw path: ids would explode label cardinality.
        route = route_template(request) or "unmatched"
        request.app[METRICS].observe_request(request.method, route, status, elapsed)
        # A fleet's unchanged polls would be most of the log: counted above, not logged.
        quiet = status == 304 and route == SYNC_ROUTE
        if not quiet and access_log.isEnabledFor(logging.INFO):
            caller = request.get(PRINCIPAL)
            # Only the path: query strings carry download signatures.
            access_log.info(
                json.dumps(
                    {
                        "method": request.method,
                        "path": request.path,
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 3),
                        "remote": request.remote,
                        "caller": (caller.node_id or "admin") if caller else None,
                    },
                    separators=(",", ":"),
                )
            )


def _dependency_errors(exc: Exception, request: web.Request) -> EdgesyncError | None:
    """Unreachable backends: 503, retryable; the store logged the reason already."""
    if isinstance(exc, DatabaseUnavailable):
        error_log.warning(
            "database unavailable during %s %s", request.method, request.rel_url.raw_path
        )
        return ServiceUnavailable("the database is unavailable; retry later")
    if isinstance(exc, ArtifactStoreUnavailable):
        error_log.warning(
            "artifact store unavailable during %s %s", request.method, request.rel_url.raw_path
        )
        return ServiceUnavailable("the artifact store is unavailable; retry later")
    return None


render_errors = error_middleware(error_log, _dependency_errors)


@web.middleware
async def refuse_nul(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A NUL in the decoded path or query (``%00``) is no id, name or cursor of ours,
    and PostgreSQL cannot even compare text holding one: refused before any route."""
    if "\x00" in request.path or any(
        "\x00" in key or "\x00" in value for key, value in request.query.items()
    ):
        raise MalformedRequest(
            "malformed request: NUL in the request target",
            details={"reason": "NUL in the request target"},
        )
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = route_access(request)
    if access is None or access is Access.PUBLIC:
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is not None or access is not Access.SIGNED or "sig" not in request.query:
        authority = request.app[SERVICES].authority
        rotation = access is Access.ROTATION
        request[PRINCIPAL] = await authority.authenticate(header, allow_previous=rotation)
    return await handler(request)


MIDDLEWARES = [fast_poll, observe, render_errors, refuse_nul, authenticate]
