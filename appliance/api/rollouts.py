"""Rollouts: start one (or dry-run it), read them, pause, resume, abort, roll back."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.api.common import json_response, principal, query_int, read_json
from appliance.planner import (
    FunctionSpec,
    MigrationSpec,
    NodeView,
    RevertSpec,
    TargetSpec,
    make_plan,
)
from appliance.rollouts.engine import ROLLOUTS
from appliance.rollouts.selection import select
from appliance.rollouts.waves import RolloutSettings, parse_settings, wave_sizes
from appliance.services import Services, services
from appliance.store.records import Target
from appliance.store.releases import ReleaseRecord
from edgesync.errors import IrreversibleRollout, ValidationFailed
from edgesync.protocol import utcnow

routes = web.RouteTableDef()

ROLLOUT_STATES = ("running", "paused", "completed", "aborted", "rolled_back")


@routes.post("/api/v1/rollouts")
async def start_rollout(request: web.Request) -> web.Response:
    principal(request).require_admin()
    dry_run = request.query.get("dry_run") in ("1", "true")
    settings = parse_settings(await read_json(request))
    svc = services(request)
    release = await svc.store.get_release(settings.release_id)
    node_ids = select(await svc.store.rollout_candidates(), settings.selector)
    if not node_ids:
        raise ValidationFailed(
            "the selector matches no unpinned node", details={"field": "selector"}
        )
    sizes = wave_sizes(settings.waves, len(node_ids))
    if not settings.allow_irreversible:
        await _refuse_irreversible(svc, release, node_ids)
    if dry_run:
        return json_response(await _dry_run(svc, settings, release, node_ids, sizes))
    rollout = await svc.store.create_rollout(settings, node_ids, sizes, utcnow())
    request.app[ROLLOUTS].nudge()
    return json_response((await svc.store.get_rollout(rollout.id)).to_api(), status=201)


async def _refuse_irreversible(svc: Services, release: ReleaseRecord, node_ids: list[str]) -> None:
    """409 when giving a node back its previous release would cross a migration
    without down_sql."""
    previous = set((await svc.store.effective_release_ids(node_ids)).values())
    lowest = release.schema_version
    for release_id in previous - {None}:
        assert release_id is not None
        lowest = min(lowest, (await svc.store.get_release(release_id)).schema_version)
    if None in previous:
        lowest = 0
    missing = [
        m.version
        for m in await svc.store.list_migrations()
        if lowest < m.version <= release.schema_version and not m.down_sql
    ]
    if missing:
        raise IrreversibleRollout(
            "rolling back would cross migration(s) without down_sql;"
            " send allow_irreversible: true to accept that",
            details={"versions": missing},
        )


async def _dry_run(
    svc: Services,
    settings: RolloutSettings,
    release: ReleaseRecord,
    node_ids: list[str],
    sizes: list[int],
) -> dict[str, Any]:
    """The rollout it would create, each wave with its node ids, and each node's actions."""
    target = target_spec(await svc.store.release_target(release.id))
    changes: dict[str, list[dict[str, Any]]] = {}
    for node_id in node_ids:
        node = await svc.store.get_node(node_id)
        draft = make_plan(NodeView(node.state(), node.state_seq), target)
        actions: list[dict[str, Any]] = [
            {"type": a.type, "version": a.version} for a in draft.actions()
        ]
        actions += [
            {"type": "deploy_function", "name": d.name, "version": d.version} for d in draft.deploys
        ]
        actions += [
            {"type": "remove_function", "name": r.name, "version": r.version} for r in draft.removes
        ]
        changes[node_id] = actions
    body = settings.to_api()
    waves = []
    for index, size in enumerate(sizes):
        start = sizes[index - 1] if index else 0
        waves.append(
            {
                "index": index,
                "size": size,
                "state": "pending",
                "node_ids": node_ids[start:size],
                "nodes": {"pending": size - start, "applied": 0, "failed": 0},
            }
        )
    return {
        "id": None,
        **body,
        "state": "dry_run",
        "waves": waves,
        "failures": 0,
        "changes": changes,
    }


def target_spec(target: Target) -> TargetSpec:
    """The planner's view of a release's target."""
    return TargetSpec(
        tuple(MigrationSpec(m.version, m.description, m.up_sql) for m in target.migrations),
        tuple(
            FunctionSpec(f.id, f.name, f.version, f.sha256, f.size_bytes, f.storage_key)
            for f in target.functions
        ),
        tuple(RevertSpec(m.version, m.down_sql) for m in target.reverts),
    )


@routes.get("/api/v1/rollouts")
async def list_rollouts(request: web.Request) -> web.Response:
    principal(request).require_admin()
    state = request.query.get("state")
    if state is not None and state not in ROLLOUT_STATES:
        raise ValidationFailed(
            f"state must be one of {', '.join(ROLLOUT_STATES)}", details={"field": "state"}
        )
    rollouts, cursor = await services(request).store.list_rollouts(
        state=state,
        limit=query_int(request, "limit", 100, 1, 1000),
        cursor=request.query.get("cursor"),
    )
    return json_response({"rollouts": [r.to_api() for r in rollouts], "next_cursor": cursor})


@routes.get("/api/v1/rollouts/{rollout_id}")
async def get_rollout(request: web.Request) -> web.Response:
    principal(request).require_admin()
    rollout = await services(request).store.get_rollout(request.match_info["rollout_id"])
    return json_response(rollout.to_api())


async def _change(request: web.Request, action: str) -> web.Response:
    principal(request).require_admin()
    await read_json(request, allow_empty=True)
    rollout = await services(request).store.change_rollout(
        request.match_info["rollout_id"], action, utcnow()
    )
    if action == "resume":
        request.app[ROLLOUTS].nudge()
    return json_response(rollout.to_api())


@routes.post("/api/v1/rollouts/{rollout_id}/pause")
async def pause(request: web.Request) -> web.Response:
    return await _change(request, "pause")


@routes.post("/api/v1/rollouts/{rollout_id}/resume")
async def resume(request: web.Request) -> web.Response:
    return await _change(request, "resume")


@routes.post("/api/v1/rollouts/{rollout_id}/abort")
async def abort(request: web.Request) -> web.Response:
    return await _change(request, "abort")


@routes.post("/api/v1/rollouts/{rollout_id}/rollback")
async def rollback(request: web.Request) -> web.Response:
    return await _change(request, "rollback")
