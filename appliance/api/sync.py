"""Plans, acks and sync history; the poll carries the node's liveness."""

from __future__ import annotations

from aiohttp import web

from appliance.api.bounds import refuse_too_many
from appliance.api.common import base_url, json_response, principal, query_int, read_json
from appliance.fast_poll import SYNC_ROUTE, liveness_headers
from appliance.services import services
from edgesync.errors import NotFound, ValidationFailed
from edgesync.protocol import (
    AGENT_VERSION_HEADER,
    LIVENESS_RECORDED,
    LIVENESS_RECORDED_HEADER,
    STATE_ETAG_HEADER,
    Ack,
)

routes = web.RouteTableDef()


@routes.get(SYNC_ROUTE)
async def get_plan(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    caller = principal(request)
    caller.require_node(node_id)
    svc = services(request)
    facts = liveness_headers(request.headers)
    if facts is None:  # the value is never echoed
        raise ValidationFailed(
            f"{AGENT_VERSION_HEADER} and {STATE_ETAG_HEADER} must be short printable ASCII",
            details={"field": "headers"},
        )
    stamp = await svc.sync.cache.stamp(node_id)
    if stamp is None:
        raise NotFound("node not found", details={"node_id": node_id})
    svc.liveness.seen(node_id, stamp.poll_interval_seconds, *facts)

    def origin() -> str:  # only a rendered plan needs it, never a 304
        return base_url(request, svc.config.public_url)

    if request.query.get("full") in ("1", "true"):
        answer = await svc.sync.full_plan(stamp, origin())
    else:
        answer = await svc.sync.plan(stamp, request.headers.get("If-None-Match"), origin)
    headers = {"ETag": answer.etag, LIVENESS_RECORDED_HEADER: LIVENESS_RECORDED}
    if answer.body is None:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=answer.body,
        content_type="application/json",
        charset="utf-8",
        headers={**headers, "Cache-Control": "no-store"},
    )


@routes.post("/api/v1/nodes/{node_id}/sync/ack")
async def ack(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    principal(request).require_node(node_id)
    raw = await read_json(request)
    refuse_too_many(raw, ("state", "functions"), "ack.state.functions")
    result = await services(request).sync.ack(node_id, Ack.from_dict(raw))
    # recorded: false -- the ack came after its sync was finished or superseded
    # by a newer plan; it was counted on the record and changed nothing.
    return json_response({"recorded": result.recorded, "sync": result.record.to_api()})


@routes.get("/api/v1/nodes/{node_id}/sync/history")
async def history(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    principal(request).require_node_or_admin(node_id)
    store = services(request).store
    await store.get_node(node_id)  # 404 for an unknown node
    records = await store.sync_history(node_id, query_int(request, "limit", 20, 1, 500))
    return json_response({"records": [r.to_api() for r in records]})
