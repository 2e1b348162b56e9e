"""Fleet settings (auto-release, default release) and node pins."""

from __future__ import annotations

from aiohttp import web

from appliance.api.common import json_response, principal, read_json
from appliance.services import services
from appliance.store.records import NodeRecord
from edgesync.errors import ValidationFailed
from edgesync.protocol import utcnow

routes = web.RouteTableDef()


@routes.get("/api/v1/fleet")
async def get_fleet(request: web.Request) -> web.Response:
    principal(request).require_admin()
    return json_response((await services(request).store.fleet_settings()).to_api())


@routes.put("/api/v1/fleet")
async def put_fleet(request: web.Request) -> web.Response:
    principal(request).require_admin()
    body = await read_json(request)
    auto = body.get("auto_release")
    if auto is not None and not isinstance(auto, bool):
        raise ValidationFailed(
            "auto_release must be true or false", details={"field": "auto_release"}
        )
    default = body.get("default_release_id")
    if default is not None and not isinstance(default, str):
        raise ValidationFailed(
            "default_release_id must be a release id or null",
            details={"field": "default_release_id"},
        )
    settings = await services(request).store.update_fleet(
        auto_release=auto, default_release_id=default, set_default="default_release_id" in body
    )
    return json_response(settings.to_api())


@routes.put("/api/v1/nodes/{node_id}/pin")
async def pin(request: web.Request) -> web.Response:
    principal(request).require_admin()
    body = await read_json(request)
    release_id = body.get("release_id")
    if not isinstance(release_id, str) or not release_id:
        raise ValidationFailed("release_id must be a release id", details={"field": "release_id"})
    node = await services(request).store.pin_node(request.match_info["node_id"], release_id)
    return json_response(await node_body(request, node))


@routes.delete("/api/v1/nodes/{node_id}/pin")
async def unpin(request: web.Request) -> web.Response:
    principal(request).require_admin()
    node = await services(request).store.pin_node(request.match_info["node_id"], None)
    return json_response(await node_body(request, node))


async def node_body(request: web.Request, node: NodeRecord) -> dict[str, object]:
    """A node object with its effective ``release_id`` resolved."""
    body = node.to_api(utcnow())
    effective = await services(request).store.effective_release_ids([node.id])
    body["release_id"] = effective.get(node.id)
    return body
