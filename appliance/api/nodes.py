"""Node registration, heartbeats, token rotation and the admin's node list."""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from typing import Any

from aiohttp import web

from appliance.api.bounds import refuse_too_many
from appliance.api.common import (
    json_response,
    optional_str,
    principal,
    query_int,
    read_json,
)
from appliance.auth import token_digest
from appliance.liveness import moment_of
from appliance.push.service import mqtt_registration
from appliance.services import services
from appliance.store.records import NodeRecord
from edgesync.errors import NotFound, Unauthorized, ValidationFailed
from edgesync.protocol import format_time, utcnow

routes = web.RouteTableDef()

NODE_STATUSES = ("online", "offline", "syncing")
JTI_RE = re.compile(r"[0-9a-f]{32}")
COUNTER_KEYS = ("invocations", "errors")


def _labels(body: dict[str, Any]) -> dict[str, str]:
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or len(labels) > 64:
        raise ValidationFailed(
            "labels must be an object of at most 64 entries", details={"field": "labels"}
        )
    for key, value in labels.items():
        if not isinstance(value, str) or not key or len(key) > 63 or len(value) > 200:
            raise ValidationFailed(
                "labels must map short strings to strings", details={"field": f"labels.{key}"}
            )
    return dict(labels)


@routes.post("/api/v1/nodes/register")
async def register(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    name = optional_str(body, "name", 100)
    if not name:
        raise ValidationFailed("name is required", details={"field": "name"})
    region = optional_str(body, "region", 100)
    labels = _labels(body)
    now = utcnow()
    enrollment_id = await svc.authority.check_enrollment(body.get("enrollment_token"), now)
    enrollment = await svc.store.get_enrollment_token(enrollment_id)
    if region is None and enrollment is not None:
        region = enrollment.region
    node_id = str(uuid.uuid4())
    issued = svc.authority.issue_node_token(node_id, now)
    poll = svc.config.poll_interval_seconds
    node = NodeRecord(
        id=node_id,
        name=name,
        region=region,
        labels=labels,
        current_schema_version=0,
        state_seq=0,
        token_jti=issued.jti,
        token_expires_at=format_time(issued.expires_at),
        poll_interval_seconds=poll,
        agent_version=None,
        sync_status="idle",
        last_heartbeat_at=format_time(now),
        offline_after=format_time(now + timedelta(seconds=3 * poll)),
        last_sync_at=None,
        created_at=format_time(now),
    )
    await svc.store.register_node(node, issued.digest, enrollment_id)
    return json_response(
        {
            "node_id": node_id,
            "token": issued.token,
            "token_expires_at": format_time(issued.expires_at),
            "poll_interval_seconds": poll,
            "mqtt": mqtt_registration(request, node_id),
        },
        status=201,
    )


@routes.post("/api/v1/nodes/{node_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    principal(request).require_node(node_id)
    body = await read_json(request, allow_empty=True)
    refuse_too_many(body, ("functions",), "heartbeat.functions")
    svc = services(request)
    stamp = await svc.sync.cache.stamp(node_id)
    if stamp is None:
        raise NotFound("node not found", details={"node_id": node_id})
    # Liveness joins the replica's batch (written within about a second), like a poll's.
    seen_at = time.time()
    svc.liveness.seen(
        node_id,
        stamp.poll_interval_seconds,
        optional_str(body, "agent_version", 100),
        optional_str(body, "state_etag", 200),
        at=seen_at,
    )
    counters = function_counters(body)
    if counters:  # the rollouts' health gate reads them (appliance/rollouts/engine.py)
        await svc.store.record_function_counters(node_id, counters, utcnow())
    return json_response({"status": "online", "server_time": format_time(moment_of(seen_at))})


def function_counters(body: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``functions``: {"NAME": {"invocations": N, "errors": N}} since the last heartbeat."""
    raw = body.get("functions") or {}
    if not isinstance(raw, dict):
        raise ValidationFailed("functions must be an object", details={"field": "functions"})
    counters: dict[str, tuple[int, int]] = {}
    for name, counts in raw.items():
        values = [counts.get(k, 0) if isinstance(counts, dict) else None for k in COUNTER_KEYS]
        if len(name) > 63 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53 for v in values
        ):
            raise ValidationFailed(
                "function counters are non-negative integers",
                details={"field": f"functions.{name[:63]}"},
            )
        counters[name] = (int(values[0]), int(values[1]))  # type: ignore[arg-type]
    return counters


@routes.post("/api/v1/nodes/{node_id}/token/rotate")
async def rotate_token(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    caller = principal(request)
    caller.require_node(node_id)
    body = await read_json(request, allow_empty=True)
    wanted = body.get("jti")  # chosen by the node, so that it can repeat a lost rotation
    if wanted is not None and (not isinstance(wanted, str) or not JTI_RE.fullmatch(wanted)):
        raise ValidationFailed("jti must be 32 lowercase hex digits", details={"field": "jti"})
    if caller.previous and wanted is None:
        raise Unauthorized("token has been rotated already")
    svc = services(request)
    issued = svc.authority.issue_node_token(node_id, utcnow(), wanted)
    assert caller.jti is not None
    rotated = await svc.store.rotate_token(
        node_id, caller.jti, issued.jti, token_digest(issued.token), format_time(issued.expires_at)
    )
    if not rotated:
        raise Unauthorized("token has been rotated already")
    return json_response(
        {"token": issued.token, "token_expires_at": format_time(issued.expires_at)}
    )


@routes.get("/api/v1/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    principal(request).require_admin()
    status = request.query.get("status")
    if status is not None and status not in NODE_STATUSES:
        raise ValidationFailed(
            f"status must be one of {', '.join(NODE_STATUSES)}", details={"field": "status"}
        )
    await services(request).liveness.flush()  # this replica's newest liveness first
    now = utcnow()
    nodes, cursor = await services(request).store.list_nodes(
        now=now,
        status=status,
        region=request.query.get("region"),
        limit=query_int(request, "limit", 100, 1, 1000),
        cursor=request.query.get("cursor"),
    )
    releases = await services(request).store.effective_release_ids([n.id for n in nodes])
    bodies = [{**n.to_api(now), "release_id": releases.get(n.id)} for n in nodes]
    return json_response({"nodes": bodies, "next_cursor": cursor})


@routes.get("/api/v1/nodes/{node_id}")
async def get_node(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    principal(request).require_node_or_admin(node_id)
    await services(request).liveness.flush()
    store = services(request).store
    node = await store.get_node(node_id)
    releases = await store.effective_release_ids([node_id])
    return json_response({**node.to_api(utcnow()), "release_id": releases.get(node_id)})
