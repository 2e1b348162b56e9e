"""The JSON-schema vocabulary of the OpenAPI document: the shared components.

Field constraints come from the code that enforces them (``edgesync.protocol``'s
patterns and bounds), so the document states exactly what the server checks.
"""

from __future__ import annotations

from typing import Any

from edgesync.protocol import NAME_RE, SCHEMA_VERSION_MAX, SHA256_RE, VERSION_RE


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def string(max_length: int, *, min_length: int = 0, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if min_length:
        schema["minLength"] = min_length
    if nullable:
        schema["nullable"] = True
    return schema


def integer(low: int, high: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": low}
    if high is not None:
        schema["maximum"] = high
    return schema


def obj(*required: str, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def page(items: str, schema: str) -> dict[str, Any]:
    """A page of a list; ``next_cursor`` is null on the last page."""
    return obj(
        items,
        "next_cursor",
        **{items: {"type": "array", "items": ref(schema)}},
        next_cursor={"type": "string", "nullable": True},
    )


NAME = {"type": "string", "pattern": NAME_RE.pattern}
VERSION = {"type": "string", "pattern": VERSION_RE.pattern}
SHA256 = {"type": "string", "pattern": SHA256_RE.pattern}
UUID = {"type": "string", "format": "uuid"}
TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = {"type": "string", "format": "date-time", "nullable": True}
SCHEMA_VERSION = integer(0, SCHEMA_VERSION_MAX)
JTI = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
LABELS = {
    "type": "object",
    "maxProperties": 64,
    "additionalProperties": string(200),
}

SCHEMAS: dict[str, Any] = {
    "ErrorObject": obj(
        "code",
        "message",
        "details",
        "retryable",
        code={"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
        message={"type": "string"},
        details={"type": "object"},
        retryable={"type": "boolean"},
    ),
    "Error": obj("error", error=ref("ErrorObject")),
    "FunctionRef": obj("name", "version", "sha256", name=NAME, version=VERSION, sha256=SHA256),
    "NodeState": obj(
        "schema_version",
        "functions",
        schema_version=SCHEMA_VERSION,
        functions={"type": "array", "items": ref("FunctionRef")},
    ),
    "Node": obj(
        "id",
        "name",
        "region",
        "labels",
        "status",
        "current_schema_version",
        "functions",
        "agent_version",
        "poll_interval_seconds",
        "last_heartbeat_at",
        "last_sync_at",
        "created_at",
        id=UUID,
        name=string(100, min_length=1),
        region=string(100, nullable=True),
        labels=LABELS,
        status={"type": "string", "enum": ["online", "offline", "syncing"]},
        current_schema_version=SCHEMA_VERSION,
        functions={"type": "array", "items": ref("FunctionRef")},
        agent_version=string(100, nullable=True),
        poll_interval_seconds=integer(1),
        last_heartbeat_at=TIME_OR_NULL,
        last_sync_at=TIME_OR_NULL,
        created_at=TIME,
        release_id={"type": "string", "nullable": True},
        pinned_release_id={"type": "string", "nullable": True},
    ),
    "Function": obj(
        "id",
        "name",
        "version",
        "sha256",
        "size_bytes",
        "created_at",
        id=UUID,
        name=NAME,
        version=VERSION,
        sha256=SHA256,
        size_bytes=integer(0),
        requires_schema=integer(0),
        created_at=TIME,
    ),
    "Migration": obj(
        "version",
        "description",
        "up_sql",
        "down_sql",
        "checksum",
        "created_at",
        version=integer(1, SCHEMA_VERSION_MAX),
        description=string(500),
        up_sql={"type": "string", "minLength": 1},
        down_sql={"type": "string", "nullable": True},
        checksum=SHA256,
        created_at=TIME,
    ),
    "Action": {
        "type": "object",
        "required": ["type"],
        "description": "revert_schema {version, down_sql} (descending, before any "
        "apply_schema) | apply_schema {version, description, up_sql} | deploy_function "
        "{function_id, name, version, sha256, size_bytes, download_url, url_expires_at} | "
        "remove_function {name, version}",
        "properties": {
            "type": {
                "type": "string",
                "enum": ["revert_schema", "apply_schema", "deploy_function", "remove_function"],
            }
        },
    },
    "Plan": obj(
        "sync_id",
        "etag",
        "target",
        "actions",
        sync_id={"type": "string", "nullable": True},
        etag={"type": "string"},
        target=ref("NodeState"),
        actions={"type": "array", "items": ref("Action")},
    ),
    "Ack": obj(
        "sync_id",
        "status",
        "state",
        sync_id={"type": "string"},
        status={"type": "string", "enum": ["success", "failed"]},
        state=ref("NodeState"),
        error={
            "nullable": True,
            "allOf": [ref("ErrorObject")],
            "description": "required when status is failed",
        },
    ),
    "SyncRecord": obj(
        "id",
        "node_id",
        "sync_type",
        "status",
        "started_at",
        "completed_at",
        "error_code",
        "error_message",
        id=UUID,
        node_id=UUID,
        sync_type={"type": "string", "enum": ["full", "incremental"]},
        status={"type": "string", "enum": ["pending", "success", "failed"]},
        started_at=TIME,
        completed_at=TIME_OR_NULL,
        error_code={"type": "string", "nullable": True},
        error_message={"type": "string", "nullable": True},
        functions_added=integer(0),
        functions_removed=integer(0),
        schemas_applied=integer(0),
    ),
}
