"""Operational routes: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from appliance.api.common import json_response
from appliance.openapi import openapi_document
from appliance.services import services
from edgesync.errors import ServiceUnavailable
from edgesync.protocol import utcnow

routes = web.RouteTableDef()

# Each readiness probe gets this long; /readyz answers within about that.
READY_PROBE_SECONDS = 0.8


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    probes = {"database": svc.store.db.ping, "artifacts": svc.artifacts.ping}
    # Side by side, each cut off at its deadline: a database that is restarting
    # would otherwise hold the answer for the pool's whole connect timeout,
    # while the orchestrator asking wants "not ready" now.
    outcomes = await asyncio.gather(*(_probe(probe) for probe in probes.values()))
    checks = dict(zip(probes, outcomes, strict=True))
    if any(value != "ok" for value in checks.values()):
        raise ServiceUnavailable("not ready", details={"checks": checks})
    return json_response({"status": "ready", "checks": checks})


async def _probe(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), READY_PROBE_SECONDS)
    except TimeoutError:
        return f"unavailable: no answer within {READY_PROBE_SECONDS:g} s"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    svc = services(request)
    counts = await svc.store.count_nodes_by_status(utcnow())
    for status, count in counts.items():
        svc.metrics.nodes.labels(status).set(count)
    for state, count in (await svc.store.count_rollouts_by_state()).items():
        svc.metrics.rollouts.labels(state).set(count)
    svc.metrics.nodes_per_release.clear()  # releases nobody follows any more drop out
    for number, count in (await svc.store.count_nodes_by_release()).items():
        svc.metrics.nodes_per_release.labels(str(number)).set(count)
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
