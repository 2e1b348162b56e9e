"""HTTP routes of the control plane, one module per resource."""

from __future__ import annotations

from aiohttp import web

from appliance.api import (
    fleet,
    functions,
    nodes,
    ops,
    releases,
    rollouts,
    schemas,
    sync,
    tokens,
)


def setup_routes(app: web.Application) -> None:
    # sync first: the router tries resources in order, and polls are most requests.
    for module in (sync, nodes, functions, schemas, tokens, releases, rollouts, fleet, ops):
        app.router.add_routes(module.routes)
