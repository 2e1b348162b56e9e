"""The OpenAPI 3 document of the control-plane API (served at /api/v1/openapi.json).

Written as data beside the routes it describes; ``tests`` check that every
route the app registers appears here, so the two cannot drift apart silently.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from appliance.openapi_schemas import (
    JTI,
    LABELS,
    NAME,
    SCHEMAS,
    SHA256,
    TIME,
    UUID,
    VERSION,
    integer,
    obj,
    page,
    ref,
    string,
)
from edgesync import __version__
from edgesync.protocol import SCHEMA_VERSION_MAX

JSON = "application/json"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid request (INVALID_JSON, VALIDATION_FAILED, INVALID_MULTIPART, …)",
        401: "UNAUTHORIZED: missing, malformed, expired or rotated-away token",
        403: "FORBIDDEN: another node's route, or an admin-only route",
        404: "NOT_FOUND",
        409: "Conflict",
        413: "PAYLOAD_TOO_LARGE",
        415: "UNSUPPORTED_MEDIA_TYPE",
        429: "RATE_LIMITED (retryable, with Retry-After)",
        503: "SERVICE_UNAVAILABLE (retryable, with Retry-After)",
    }
    return {str(s): _json(ref("Error"), reasons[s]) for s in statuses}


# Any request may be malformed (a NUL in its query, say: 400); every body may
# also be too large or of the wrong type.
ANY_ERRORS = (400,)
BODY_ERRORS = (413, 415)


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    *,
    body: dict[str, Any] | None = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    security: str | None = "bearer",
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    statuses = set(errors) | set(ANY_ERRORS) | (set(BODY_ERRORS) if body is not None else set())
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**ok, **_errors(*sorted(statuses))},
    }
    if tags:
        operation["tags"] = list(tags)
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": body}
    if params:
        operation["parameters"] = params
    operation["security"] = [{"bearer": []}] if security else []
    return operation


def _path_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PAGE = [
    _query("limit", integer(1, 1000)),
    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
]


def _paths() -> dict[str, Any]:
    # The handlers' own limits (imported here, not at module level: the route
    # modules import this one), so the document states exactly what they check.
    from appliance.api.schemas import SQL_LIMIT
    from appliance.api.tokens import MAX_TTL_SECONDS
    from appliance.openapi_releases import release_paths

    node = [_path_param("node_id")]
    function = [_path_param("function_id")]
    s, b, o = {"type": "string"}, {"type": "boolean"}, {"type": "object"}
    register_body = obj(
        "name",
        "enrollment_token",
        name=string(100, min_length=1),
        region=string(100, nullable=True),
        labels=LABELS,
        enrollment_token={"type": "string", "pattern": "^est_[^.]+\\..+$"},
    )
    return {
        "/api/v1/nodes/register": {
            "post": _op(
                "Register a node with an enrollment token",
                {
                    "201": _json(
                        obj(
                            "node_id",
                            "token",
                            "token_expires_at",
                            "poll_interval_seconds",
                            "mqtt",
                            node_id=UUID,
                            token=s,
                            token_expires_at=TIME,
                            poll_interval_seconds=integer(1),
                            # null when MQTT push is off (docs/mqtt.md)
                            mqtt={
                                "type": "object",
                                "nullable": True,
                                "properties": {
                                    "url": s,
                                    "topics": {"type": "array", "items": s},
                                },
                            },
                        ),
                        "Registered",
                    )
                },
                (401, 503),
                body={JSON: {"schema": register_body}},
                security=None,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes": {
            "get": _op(
                "List nodes (admin)",
                {"200": _json(page("nodes", "Node"), "A page of nodes")},
                (400, 401, 403, 503),
                params=[
                    _query("status", {"type": "string", "enum": ["online", "offline", "syncing"]}),
                    _query("region", s),
                    *PAGE,
                ],
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}": {
            "get": _op(
                "Show a node (admin or that node)",
                {"200": _json(ref("Node"), "The node")},
                (401, 403, 404, 503),
                params=node,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}/heartbeat": {
            "post": _op(
                "Heartbeat (that node)",
                {
                    "200": _json(
                        obj("status", "server_time", status=s, server_time=TIME), "Recorded"
                    )
                },
                (401, 403, 404, 503),
                body={
                    JSON: {
                        "schema": obj(
                            agent_version=string(100, nullable=True),
                            state_etag=string(200, nullable=True),
                        )
                    }
                },
                body_required=False,
                params=node,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}/token/rotate": {
            "post": _op(
                "Rotate the node token (that node); the old one stops working",
                {
                    "200": _json(
                        obj("token", "token_expires_at", token=s, token_expires_at=TIME),
                        "New token",
                    )
                },
                (401, 403, 409, 503),
                body={JSON: {"schema": obj(jti=JTI)}},
                body_required=False,
                params=node,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}/sync": {
            "get": _op(
                "The node's plan; 304 when If-None-Match equals its ETag",
                {
                    "200": _json(ref("Plan"), "Plan (ETag header set)"),
                    "304": {"description": "Not modified"},
                },
                (401, 403, 404, 429, 503),
                params=[
                    *node,
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": s},
                    _query("full", b, "plan as if the node held no functions"),
                ],
                tags=("sync",),
            )
        },
        "/api/v1/nodes/{node_id}/sync/ack": {
            "post": _op(
                "Acknowledge a plan (idempotent)",
                {
                    "200": _json(
                        obj("recorded", "sync", recorded=b, sync=ref("SyncRecord")), "Recorded"
                    )
                },
                (401, 403, 404, 409, 503),
                body={JSON: {"schema": ref("Ack")}},
                params=node,
                tags=("sync",),
            )
        },
        "/api/v1/nodes/{node_id}/sync/history": {
            "get": _op(
                "Sync history, newest first",
                {
                    "200": _json(
                        obj("records", records={"type": "array", "items": ref("SyncRecord")}),
                        "History",
                    )
                },
                (400, 401, 403, 404, 503),
                params=[*node, _query("limit", integer(1, 500))],
                tags=("sync",),
            )
        },
        "/api/v1/functions": {
            "post": _op(
                "Upload a function version (admin, multipart)",
                {"201": _json(ref("Function"), "Stored")},
                (401, 403, 409, 503),
                body={
                    "multipart/form-data": {
                        "schema": obj(
                            "name",
                            "version",
                            "module",
                            name=NAME,
                            version=VERSION,
                            sha256=SHA256,
                            module={"type": "string", "format": "binary"},
                        )
                    }
                },
                tags=("functions",),
            ),
            "get": _op(
                "List function versions (admin)",
                {"200": _json(page("functions", "Function"), "A page of functions")},
                (400, 401, 403, 503),
                params=[_query("name", NAME), *PAGE],
                tags=("functions",),
            ),
        },
        "/api/v1/functions/{function_id}": {
            "get": _op(
                "Show a function version",
                {"200": _json(ref("Function"), "The function")},
                (401, 404, 503),
                params=function,
                tags=("functions",),
            ),
            "delete": _op(
                "Withdraw a function version (admin)",
                {"204": {"description": "Deleted"}},
                (401, 403, 404, 503),
                params=function,
                tags=("functions",),
            ),
        },
        "/api/v1/functions/{function_id}/download": {
            "get": _op(
                "Download the module: signed URL (expires, sig), or a bearer token",
                {
                    "200": {
                        "description": "The module",
                        "content": {
                            "application/wasm": {"schema": {"type": "string", "format": "binary"}}
                        },
                    }
                },
                (401, 403, 404, 503),
                params=[*function, _query("expires", s), _query("sig", s)],
                security=None,
                tags=("functions",),
            )
        },
        "/api/v1/schemas": {
            "post": _op(
                "Append a schema migration (admin); checked on a scratch database"
                " (with down_sql: up, down, up again) and linted for destructive statements",
                {"201": _json(ref("Migration"), "Accepted")},
                (401, 403, 409, 503),
                body={
                    JSON: {
                        "schema": obj(
                            "version",
                            "up_sql",
                            version=integer(1, SCHEMA_VERSION_MAX),
                            description=string(500, nullable=True),
                            up_sql=string(SQL_LIMIT, min_length=1),
                            down_sql=string(SQL_LIMIT, nullable=True),
                            allow_destructive=b,
                        )
                    }
                },
                tags=("schemas",),
            ),
            "get": _op(
                "List migrations, ascending",
                {
                    "200": _json(
                        obj("migrations", migrations={"type": "array", "items": ref("Migration")}),
                        "All",
                    )
                },
                (401, 503),
                tags=("schemas",),
            ),
        },
        "/api/v1/enrollment-tokens": {
            "post": _op(
                "Create an enrollment token (admin)",
                {
                    "201": _json(
                        obj(
                            "token",
                            "expires_at",
                            "max_uses",
                            "region",
                            token=s,
                            expires_at=TIME,
                            max_uses=integer(1, 1_000_000),
                            region=string(100, nullable=True),
                        ),
                        "Created",
                    )
                },
                (401, 403, 503),
                body={
                    JSON: {
                        "schema": obj(
                            ttl_seconds=integer(1, MAX_TTL_SECONDS),
                            max_uses=integer(1, 1_000_000),
                            region=string(100, nullable=True),
                        )
                    }
                },
                body_required=False,
                tags=("auth",),
            )
        },
        "/api/v1/openapi.json": {
            "get": _op("This document", {"200": _json(o, "OpenAPI 3 document")}, (), security=None)
        },
        "/healthz": {"get": _op("Process is up", {"200": _json(o, "ok")}, (), security=None)},
        "/readyz": {
            "get": _op(
                "Database and artifact store reachable",
                {"200": _json(o, "ready")},
                (503,),
                security=None,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {"200": {"description": "text/plain exposition"}},
                (503,),
                security=None,
            )
        },
        **release_paths(),
    }


def _release_schemas() -> dict[str, Any]:
    from appliance.openapi_releases import RELEASE_SCHEMAS

    return RELEASE_SCHEMAS


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "edgesync control plane",
            "version": __version__,
            "description": "WASM functions and the SQL schema they need, delivered to edge fleets. "
            "Every non-2xx response (except 304) carries the error envelope "
            "(components.schemas.Error).",
        },
        "paths": _paths(),
        "components": {
            "schemas": {**SCHEMAS, **_release_schemas()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
