"""Middlewares: one structured log line per request, metrics, errors, auth.

Order (outermost first): ``observe`` times and logs whatever comes back,
``render_errors`` turns every exception into the error envelope, and
``authenticate`` sets the caller on ``/api/v1`` routes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from appliance.api.common import PRINCIPAL, json_response
from appliance.artifacts import ArtifactStoreUnavailable
from appliance.services import METRICS, SERVICES
from appliance.store.db import DatabaseUnavailable
from edgesync.errors import (
    EdgesyncError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

access_log = logging.getLogger("edgesync.access")
error_log = logging.getLogger("edgesync.errors")

# Reachable without a bearer token.
PUBLIC_API_PATHS = frozenset({"/api/v1/nodes/register", "/api/v1/openapi.json"})


def _route_name(request: web.Request) -> str:
    """The route template (never the raw path: ids would explode label cardinality)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


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
        route = _route_name(request)
        request.app[METRICS].observe_request(request.method, route, status, elapsed)
        if access_log.isEnabledFor(logging.INFO):
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


@web.middleware
async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EdgesyncError as exc:
        return _envelope(exc)
    except DatabaseUnavailable:
        error_log.warning("database unavailable during %s %s", request.method, request.path)
        return _envelope(ServiceUnavailable("the database is unavailable; retry later"))
    except ArtifactStoreUnavailable:
        # The store logged the reason; the body says no more than this.
        error_log.warning("artifact store unavailable during %s %s", request.method, request.path)
        return _envelope(ServiceUnavailable("the artifact store is unavailable; retry later"))
    except web.HTTPNotFound:
        return _envelope(NotFound(f"no route for {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        error.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return _envelope(error)
    except web.HTTPRequestEntityTooLarge:
        return _envelope(PayloadTooLarge("request body exceeds the configured limit"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _envelope(
            EdgesyncError(exc.reason, code=exc.reason.upper().replace(" ", "_"), status=exc.status)
        )
    except Exception:
        error_log.exception("unhandled error in %s %s", request.method, request.path)
        return _envelope(InternalError("internal server error"))


def _envelope(error: EdgesyncError) -> web.Response:
    return json_response(error.envelope(), status=error.status, headers=error.headers or None)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    routed = request.match_info.http_exception is None  # unknown routes stay 404
    if routed and path.startswith("/api/v1/") and path not in PUBLIC_API_PATHS:
        header = request.headers.get("Authorization")
        signed_download = path.endswith("/download") and "sig" in request.query
        if header is not None or not signed_download:
            authority = request.app[SERVICES].authority
            rotation = path.endswith("/token/rotate") and request.method == "POST"
            request[PRINCIPAL] = await authority.authenticate(header, allow_previous=rotation)
    return await handler(request)


MIDDLEWARES = [observe, render_errors, authenticate]
