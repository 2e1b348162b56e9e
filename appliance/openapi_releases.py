"""The OpenAPI description of releases, fleet settings, pins and rollouts (v2)."""

from __future__ import annotations

from typing import Any

from appliance.openapi import JSON, PAGE, _json, _op, _path_param, _query
from appliance.openapi_schemas import (
    NAME,
    SCHEMA_VERSION,
    TIME,
    UUID,
    VERSION,
    integer,
    obj,
    page,
    ref,
    string,
)

SIZE = {"oneOf": [integer(0), {"type": "string", "pattern": "^[0-9.]+%$"}]}
ROLLOUT_STATES = ["running", "paused", "completed", "aborted", "rolled_back"]

RELEASE_SCHEMAS: dict[str, Any] = {
    "Release": obj(
        "id",
        "number",
        "schema_version",
        "functions",
        "notes",
        "created_at",
        id=UUID,
        number=integer(1),
        schema_version=SCHEMA_VERSION,
        functions={"type": "array", "items": ref("FunctionRef")},
        notes={"type": "string", "nullable": True},
        auto={"type": "boolean"},
        previous_release_id={"type": "string", "nullable": True},
        created_at=TIME,
    ),
    "Fleet": obj(
        "auto_release",
        "default_release_id",
        auto_release={"type": "boolean"},
        default_release_id={"type": "string", "nullable": True},
    ),
    "Wave": obj(
        "index",
        "size",
        "state",
        "nodes",
        index=integer(0),
        size=integer(0),
        state={"type": "string", "enum": ["pending", "running", "done"]},
        nodes=obj(
            "pending",
            "applied",
            "failed",
            pending=integer(0),
            applied=integer(0),
            failed=integer(0),
        ),
        node_ids={"type": "array", "items": {"type": "string"}},
    ),
    "Rollout": obj(
        "id",
        "release_id",
        "state",
        "selector",
        "waves",
        "failures",
        id={"type": "string", "nullable": True},
        release_id=UUID,
        state={"type": "string", "enum": [*ROLLOUT_STATES, "dry_run"]},
        selector={"type": "object"},
        waves={"type": "array", "items": ref("Wave")},
        waves_spec={"type": "array", "items": SIZE},
        failures=integer(0),
        max_failures=SIZE,
        wave_timeout_seconds=integer(0),
        observe_seconds=integer(0),
        max_function_error_rate={"type": "number", "nullable": True},
        auto_rollback={"type": "boolean"},
        allow_irreversible={"type": "boolean"},
        changes={"type": "object"},
        created_at=TIME,
        updated_at=TIME,
    ),
}

_ROLLOUT_BODY = obj(
    "release_id",
    release_id={"type": "string"},
    selector=obj(
        region={"type": "string"},
        labels={"type": "object", "additionalProperties": {"type": "string"}},
        node_ids={"type": "array", "items": {"type": "string"}},
    ),
    waves={"type": "array", "items": SIZE, "minItems": 1, "maxItems": 100},
    max_failures=SIZE,
    wave_timeout_seconds=integer(0, 7 * 86400),
    observe_seconds=integer(0, 7 * 86400),
    max_function_error_rate={"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
    auto_rollback={"type": "boolean"},
    allow_irreversible={"type": "boolean"},
)


def release_paths() -> dict[str, Any]:
    release = [_path_param("release_id")]
    rollout = [_path_param("rollout_id")]
    node = [_path_param("node_id")]
    fleet_ok = {"200": _json(ref("Fleet"), "The fleet's settings")}
    rollout_ok = {"200": _json(ref("Rollout"), "The rollout")}
    paths: dict[str, Any] = {
        "/api/v1/releases": {
            "post": _op(
                "Create the next release: a schema version and function versions, as one unit",
                {"201": _json(ref("Release"), "Created")},
                (401, 403, 404, 409, 503),
                body={
                    JSON: {
                        "schema": obj(
                            "schema_version",
                            schema_version=SCHEMA_VERSION,
                            functions={
                                "type": "array",
                                "items": obj("name", "version", name=NAME, version=VERSION),
                            },
                            notes=string(2000, nullable=True),
                        )
                    }
                },
                tags=("releases",),
            ),
            "get": _op(
                "List releases, newest first",
                {"200": _json(page("releases", "Release"), "A page")},
                (401, 403, 503),
                params=PAGE,
                tags=("releases",),
            ),
        },
        "/api/v1/releases/{release_id}": {
            "get": _op(
                "One release, with the id of the one before it",
                {"200": _json(ref("Release"), "The release")},
                (401, 403, 404, 503),
                params=release,
                tags=("releases",),
            )
        },
        "/api/v1/fleet": {
            "get": _op("Fleet settings", fleet_ok, (401, 403, 503), tags=("releases",)),
            "put": _op(
                "Change auto_release and/or default_release_id",
                fleet_ok,
                (401, 403, 404, 503),
                body={JSON: {"schema": ref("Fleet")}},
                tags=("releases",),
            ),
        },
        "/api/v1/nodes/{node_id}/pin": {
            "put": _op(
                "Pin a node to a release",
                {"200": _json(ref("Node"), "The node")},
                (401, 403, 404, 409, 503),
                body={JSON: {"schema": obj("release_id", release_id={"type": "string"})}},
                params=node,
                tags=("releases",),
            ),
            "delete": _op(
                "Unpin a node",
                {"200": _json(ref("Node"), "The node")},
                (401, 403, 404, 503),
                params=node,
                tags=("releases",),
            ),
        },
        "/api/v1/rollouts": {
            "post": _op(
                "Start a rollout (with ?dry_run=true: what it would do, nothing stored)",
                {"201": _json(ref("Rollout"), "Started"), "200": _json(ref("Rollout"), "Dry run")},
                (401, 403, 404, 409, 503),
                body={JSON: {"schema": _ROLLOUT_BODY}},
                params=[_query("dry_run", {"type": "string", "enum": ["true", "false", "1", "0"]})],
                tags=("rollouts",),
            ),
            "get": _op(
                "List rollouts",
                {"200": _json(page("rollouts", "Rollout"), "A page")},
                (401, 403, 503),
                params=[_query("state", {"type": "string", "enum": ROLLOUT_STATES}), *PAGE],
                tags=("rollouts",),
            ),
        },
        "/api/v1/rollouts/{rollout_id}": {
            "get": _op(
                "One rollout", rollout_ok, (401, 403, 404, 503), params=rollout, tags=("rollouts",)
            )
        },
    }
    for action in ("pause", "resume", "abort", "rollback"):
        paths[f"/api/v1/rollouts/{{rollout_id}}/{action}"] = {
            "post": _op(
                f"{action.capitalize()} a rollout",
                rollout_ok,
                (401, 403, 404, 409, 503),
                body={JSON: {"schema": {"type": "object"}}},
                body_required=False,
                params=rollout,
                tags=("rollouts",),
            )
        }
    return paths
