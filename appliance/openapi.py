"""The OpenAPI 3 document of the control-plane API (served at /api/v1/openapi.json).

Written as data beside the routes it describes; ``tests`` check that every
route the app registers appears here, so the two cannot drift apart silently.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from edgesync import __version__

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid request (INVALID_JSON, VALIDATION_FAILED, …)",
        401: "UNAUTHORIZED: missing, malformed, expired or rotated-away token",
        403: "FORBIDDEN: another node's route, or an admin-only route",
        404: "NOT_FOUND",
        409: "Conflict",
        413: "PAYLOAD_TOO_LARGE",
        503: "SERVICE_UNAVAILABLE (retryable, with Retry-After)",
    }
    return {str(s): _json(_ref("Error"), reasons[s]) for s in statuses}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    security: str | None = "bearer",
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*errors)}}
    if tags:
        operation["tags"] = list(tags)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    if params:
        operation["parameters"] = params
    operation["security"] = [{"bearer": []}] if security else []
    return operation


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    _query("cursor", {"type": "string"}),
]

SCHEMAS: dict[str, Any] = {
    "ErrorObject": {
        "type": "object",
        "required": ["code", "message", "details", "retryable"],
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
            "message": {"type": "string"},
            "details": {"type": "object"},
            "retryable": {"type": "boolean"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _ref("ErrorObject")},
    },
    "FunctionRef": {
        "type": "object",
        "required": ["name", "version", "sha256"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
            "version": {"type": "string", "pattern": "^[0-9A-Za-z][0-9A-Za-z.+_-]{0,49}$"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    },
    "NodeState": {
        "type": "object",
        "required": ["schema_version", "functions"],
        "properties": {
            "schema_version": {"type": "integer", "minimum": 0},
            "functions": {"type": "array", "items": _ref("FunctionRef")},
        },
    },
    "Node": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "region": {"type": "string", "nullable": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "status": {"type": "string", "enum": ["online", "offline", "syncing"]},
            "current_schema_version": {"type": "integer"},
            "functions": {"type": "array", "items": _ref("FunctionRef")},
            "agent_version": {"type": "string", "nullable": True},
            "poll_interval_seconds": {"type": "integer"},
            "last_heartbeat_at": {"type": "string", "format": "date-time", "nullable": True},
            "last_sync_at": {"type": "string", "format": "date-time", "nullable": True},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Function": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "version": {"type": "string"},
            "sha256": {"type": "string"},
            "size_bytes": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Migration": {
        "type": "object",
        "properties": {
            "version": {"type": "integer"},
            "description": {"type": "string"},
            "up_sql": {"type": "string"},
            "down_sql": {"type": "string", "nullable": True},
            "checksum": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Action": {
        "type": "object",
        "required": ["type"],
        "description": "apply_schema {version, description, up_sql} | deploy_function "
        "{function_id, name, version, sha256, size_bytes, download_url, url_expires_at} | "
        "remove_function {name, version}",
        "properties": {
            "type": {
                "type": "string",
                "enum": ["apply_schema", "deploy_function", "remove_function"],
            }
        },
    },
    "Plan": {
        "type": "object",
        "required": ["sync_id", "etag", "target", "actions"],
        "properties": {
            "sync_id": {"type": "string", "nullable": True},
            "etag": {"type": "string"},
            "target": _ref("NodeState"),
            "actions": {"type": "array", "items": _ref("Action")},
        },
    },
    "Ack": {
        "type": "object",
        "required": ["sync_id", "status", "state"],
        "properties": {
            "sync_id": {"type": "string"},
            "status": {"type": "string", "enum": ["success", "failed"]},
            "state": _ref("NodeState"),
            "error": {"nullable": True, "allOf": [_ref("ErrorObject")]},
        },
    },
    "SyncRecord": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "node_id": {"type": "string"},
            "sync_type": {"type": "string", "enum": ["full", "incremental"]},
            "status": {"type": "string", "enum": ["pending", "success", "failed"]},
            "started_at": {"type": "string", "format": "date-time"},
            "completed_at": {"type": "string", "format": "date-time", "nullable": True},
            "error_code": {"type": "string", "nullable": True},
            "error_message": {"type": "string", "nullable": True},
            "functions_added": {"type": "integer"},
            "functions_removed": {"type": "integer"},
            "schemas_applied": {"type": "integer"},
        },
    },
}


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _paths() -> dict[str, Any]:
    node = [_path_param("node_id")]
    function = [_path_param("function_id")]
    s, i, b, o = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "object"}
    register_body = _obj(name=s, region=s, labels=o, enrollment_token=s)
    return {
        "/api/v1/nodes/register": {
            "post": _op(
                "Register a node with an enrollment token",
                {
                    "201": _json(
                        _obj(
                            node_id=s,
                            token=s,
                            token_expires_at=s,
                            poll_interval_seconds=i,
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
                (400, 401, 503),
                body={JSON: {"schema": register_body}},
                security=None,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes": {
            "get": _op(
                "List nodes (admin)",
                {
                    "200": _json(
                        _obj(nodes={"type": "array", "items": _ref("Node")}, next_cursor=s),
                        "A page of nodes",
                    )
                },
                (400, 401, 403),
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
                {"200": _json(_ref("Node"), "The node")},
                (401, 403, 404),
                params=node,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}/heartbeat": {
            "post": _op(
                "Heartbeat (that node)",
                {"200": _json(_obj(status=s, server_time=s), "Recorded")},
                (400, 401, 403, 404),
                body={JSON: {"schema": _obj(agent_version=s, state_etag=s)}},
                params=node,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}/token/rotate": {
            "post": _op(
                "Rotate the node token (that node); the old one stops working",
                {"200": _json(_obj(token=s, token_expires_at=s), "New token")},
                (401, 403),
                params=node,
                tags=("nodes",),
            )
        },
        "/api/v1/nodes/{node_id}/sync": {
            "get": _op(
                "The node's plan; 304 when If-None-Match equals its ETag",
                {
                    "200": _json(_ref("Plan"), "Plan (ETag header set)"),
                    "304": {"description": "Not modified"},
                },
                (401, 403, 404),
                params=[
                    *node,
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": s},
                    _query("full", {"type": "boolean"}, "plan as if the node held no functions"),
                ],
                tags=("sync",),
            )
        },
        "/api/v1/nodes/{node_id}/sync/ack": {
            "post": _op(
                "Acknowledge a plan (idempotent)",
                {"200": _json(_obj(recorded=b, sync=_ref("SyncRecord")), "Recorded")},
                (400, 401, 403, 404),
                body={JSON: {"schema": _ref("Ack")}},
                params=node,
                tags=("sync",),
            )
        },
        "/api/v1/nodes/{node_id}/sync/history": {
            "get": _op(
                "Sync history, newest first",
                {
                    "200": _json(
                        _obj(records={"type": "array", "items": _ref("SyncRecord")}), "History"
                    )
                },
                (400, 401, 403, 404),
                params=[*node, _query("limit", {"type": "integer", "minimum": 1, "maximum": 500})],
                tags=("sync",),
            )
        },
        "/api/v1/functions": {
            "post": _op(
                "Upload a function version (admin, multipart)",
                {"201": _json(_ref("Function"), "Stored")},
                (400, 401, 403, 409, 413),
                body={
                    "multipart/form-data": {
                        "schema": _obj(
                            name=s,
                            version=s,
                            sha256=s,
                            module={"type": "string", "format": "binary"},
                        )
                    }
                },
                tags=("functions",),
            ),
            "get": _op(
                "List function versions (admin)",
                {
                    "200": _json(
                        _obj(functions={"type": "array", "items": _ref("Function")}, next_cursor=s),
                        "A page of functions",
                    )
                },
                (400, 401, 403),
                params=[_query("name", s), *PAGE],
                tags=("functions",),
            ),
        },
        "/api/v1/functions/{function_id}": {
            "get": _op(
                "Show a function version",
                {"200": _json(_ref("Function"), "The function")},
                (401, 404),
                params=function,
                tags=("functions",),
            ),
            "delete": _op(
                "Withdraw a function version (admin)",
                {"204": {"description": "Deleted"}},
                (401, 403, 404),
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
                (401, 403, 404),
                params=[*function, _query("expires", s), _query("sig", s)],
                security=None,
                tags=("functions",),
            )
        },
        "/api/v1/schemas": {
            "post": _op(
                "Append a schema migration (admin); checked on a scratch database",
                {"201": _json(_ref("Migration"), "Accepted")},
                (400, 401, 403, 409),
                body={JSON: {"schema": _obj(version=i, description=s, up_sql=s, down_sql=s)}},
                tags=("schemas",),
            ),
            "get": _op(
                "List migrations, ascending",
                {
                    "200": _json(
                        _obj(migrations={"type": "array", "items": _ref("Migration")}), "All"
                    )
                },
                (401,),
                tags=("schemas",),
            ),
        },
        "/api/v1/enrollment-tokens": {
            "post": _op(
                "Create an enrollment token (admin)",
                {"201": _json(_obj(token=s, expires_at=s, max_uses=i, region=s), "Created")},
                (400, 401, 403),
                body={JSON: {"schema": _obj(ttl_seconds=i, max_uses=i, region=s)}},
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
                (),
                security=None,
            )
        },
    }


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
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
