"""Operational routes: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from appliance.api.common import json_response
from appliance.openapi import openapi_document
from appliance.services import services
from edgesync.errors import ServiceUnavailable
from edgesync.protocol import utcnow

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    checks: dict[str, str] = {}
    for name, probe in (("database", svc.store.db.ping), ("artifacts", svc.artifacts.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    if any(value != "ok" for value in checks.values()):
        raise ServiceUnavailable("not ready", details={"checks": checks})
    return json_response({"status": "ready", "checks": checks})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    svc = services(request)
    counts = await svc.store.count_nodes_by_status(utcnow())
    for status, count in counts.items():
        svc.metrics.nodes.labels(status).set(count)
    pool = svc.store.db.pool_stats()
    svc.metrics.db_connections.set(pool.in_use)
    svc.metrics.db_pool_size.set(pool.size)
    svc.metrics.db_pool_max.set(pool.max_size)
    svc.metrics.db_pool_waiting.set(pool.waiting)
    return web.Response(
        body=generate_latest(svc.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
