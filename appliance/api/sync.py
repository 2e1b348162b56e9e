"""Plans, acks and sync history."""

from __future__ import annotations

from aiohttp import web

from appliance.api.common import base_url, json_response, principal, query_int, read_json
from appliance.services import services
from edgesync.errors import ValidationFailed
from edgesync.protocol import Ack

routes = web.RouteTableDef()

# A node's state lists one entry per function name it runs; no fleet comes near
# this, and a bigger ack would hold the write lock for seconds.
MAX_ACK_FUNCTIONS = 1000


@routes.get("/api/v1/nodes/{node_id}/sync")
async def get_plan(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    caller = principal(request)
    caller.require_node(node_id)
    assert caller.stamp is not None
    svc = services(request)

    def origin() -> str:  # only a rendered plan needs it, never a 304
        return base_url(request, svc.config.public_url)

    if request.query.get("full") in ("1", "true"):
        answer = await svc.sync.full_plan(caller.stamp, origin())
    else:
        answer = await svc.sync.plan(caller.stamp, request.headers.get("If-None-Match"), origin)
    if answer.body is None:
        return web.Response(status=304, headers={"ETag": answer.etag})
    return web.Response(
        body=answer.body,
        content_type="application/json",
        charset="utf-8",
        headers={"ETag": answer.etag, "Cache-Control": "no-store"},
    )


@routes.post("/api/v1/nodes/{node_id}/sync/ack")
async def ack(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    principal(request).require_node(node_id)
    raw = await read_json(request)
    check_state_size(raw)
    result = await services(request).sync.ack(node_id, Ack.from_dict(raw))
    # recorded: false -- the ack came after its sync was finished or superseded
    # by a newer plan; it was counted on the record and changed nothing.
    return json_response({"recorded": result.recorded, "sync": result.record.to_api()})


def check_state_size(body: object) -> None:
    """Refuse an ack naming more functions than any node can hold, before any DB work."""
    state = body.get("state") if isinstance(body, dict) else None
    functions = state.get("functions") if isinstance(state, dict) else None
    if isinstance(functions, list) and len(functions) > MAX_ACK_FUNCTIONS:
        raise ValidationFailed(
            f"ack.state.functions may list at most {MAX_ACK_FUNCTIONS} functions",
            details={"field": "ack.state.functions", "max_items": MAX_ACK_FUNCTIONS},
        )


@routes.get("/api/v1/nodes/{node_id}/sync/history")
async def history(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    principal(request).require_node_or_admin(node_id)
    store = services(request).store
    await store.get_node(node_id)  # 404 for an unknown node
    records = await store.sync_history(node_id, query_int(request, "limit", 20, 1, 500))
    return json_response({"records": [r.to_api() for r in records]})
