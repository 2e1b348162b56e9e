"""Serving plans and recording acks, with the plan cache in front of the planner.

The cache is keyed by what a plan depends on: the fleet generation (bumped by
every change to the target, in the database, so every replica sees it) and the
node's state revision (bumped by every recorded ack). A key that no longer
matches is a miss, so a cached plan can never be stale; the 5-minute TTL only
bounds memory and keeps signed URLs well inside their validity.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from appliance.metrics import Metrics
from appliance.planner import (
    FunctionSpec,
    MigrationSpec,
    NodeView,
    PlanDraft,
    TargetSpec,
    make_plan,
)
from appliance.rate_limit import SlidingWindowLimit
from appliance.signing import UrlSigner
from appliance.store.records import NodeStamp, SyncRecord
from appliance.store.store import Store
from appliance.store.syncs import APPLIED, AckOutcome
from edgesync.protocol import Ack, NodeState, format_time, parse_time, utcnow

CACHE_LIMIT = 200_000
# A node healing a lost module asks for one full plan, and again after a failure.
FULL_PLANS_PER_WINDOW = 10
FULL_PLAN_WINDOW_SECONDS = 60.0


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """RFC 9110 weak comparison against an ``If-None-Match`` list (or ``*``)."""
    if not if_none_match:
        return False
    if if_none_match == etag:  # what agents send: decided without parsing
        return True
    if if_none_match.strip() == "*":
        return True
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return etag.removeprefix("W/") in candidates


@dataclass
class _CachedPlan:
    key: tuple[int, int]
    etag: str
    body: bytes | None
    created: float


@dataclass(frozen=True)
class PlanResponse:
    etag: str
    body: bytes | None  # None: answer 304 Not Modified


class SyncService:
    def __init__(
        self,
        store: Store,
        signer: UrlSigner,
        metrics: Metrics,
        *,
        cache_ttl_seconds: float = 300,
        delivery: str = "proxy",
        presign: Callable[[str, int], str | None] | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._metrics = metrics
        # Cached plans carry signed URLs: never serve one past a third of its TTL.
        self._ttl = min(cache_ttl_seconds, signer.ttl_seconds / 3)
        self._plans: dict[str, _CachedPlan] = {}
        self._target: tuple[int, TargetSpec] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._delivery = delivery
        self._not_modified = metrics.plans.labels("not_modified")  # bound once: hot path
        self._full = metrics.plans.labels("full")
        self._presign = presign
        self._full_plans = SlidingWindowLimit(FULL_PLANS_PER_WINDOW, FULL_PLAN_WINDOW_SECONDS)

    async def plan(
        self, stamp: NodeStamp, if_none_match: str | None, base_url: Callable[[], str]
    ) -> PlanResponse:
        key = (stamp.generation, stamp.state_seq)
        cached = self._fresh(stamp.node_id, key)
        if cached is not None and (
            cached.body is not None or etag_matches(cached.etag, if_none_match)
        ):
            return self._answer(cached, if_none_match)
        # One plan (and so one sync record) per node at a time.
        async with self._locks.setdefault(stamp.node_id, asyncio.Lock()):
            cached = self._fresh(stamp.node_id, key)
            if cached is None or (
                cached.body is None and not etag_matches(cached.etag, if_none_match)
            ):
                cached = await self._build(stamp, key, if_none_match, base_url)
            return self._answer(cached, if_none_match)

    def _fresh(self, node_id: str, key: tuple[int, int]) -> _CachedPlan | None:
        cached = self._plans.get(node_id)
        if cached is None or cached.key != key or time.monotonic() - cached.created > self._ttl:
            return None
        return cached

    def _answer(self, cached: _CachedPlan, if_none_match: str | None) -> PlanResponse:
        if etag_matches(cached.etag, if_none_match):
            self._not_modified.inc()
            return PlanResponse(cached.etag, None)
        self._full.inc()
        return PlanResponse(cached.etag, cached.body)

    async def _build(
        self,
        stamp: NodeStamp,
        key: tuple[int, int],
        if_none_match: str | None,
        base_url: Callable[[], str],
    ) -> _CachedPlan:
        node = await self._store.get_node(stamp.node_id)
        target = await self._target_spec(stamp.generation)
        draft = make_plan(NodeView(node.state(), node.state_seq), target)
        body: bytes | None = None
        # A node that already holds this exact plan needs no new sync record.
        if not etag_matches(draft.etag, if_none_match):
            body = await self._render(stamp.node_id, draft, base_url())
        cached = _CachedPlan(key, draft.etag, body, time.monotonic())
        if len(self._plans) >= CACHE_LIMIT:
            self._plans.pop(next(iter(self._plans)))
        self._plans[stamp.node_id] = cached
        return cached

    async def full_plan(self, stamp: NodeStamp, base_url: str) -> PlanResponse:
        """The plan as if the node held no functions, never cached.

        For a node whose module cache lost a file: every target function comes
        with a download, so the node can fetch again what it no longer has.
        Asking again for the same plan hands out the same open sync record, and
        a node may ask at most ``FULL_PLANS_PER_WINDOW`` times a window (429).
        """
        self._full_plans.check(stamp.node_id, "full plans")
        node = await self._store.get_node(stamp.node_id)
        target = await self._target_spec(stamp.generation)
        bare = NodeView(NodeState(node.current_schema_version, ()), node.state_seq)
        draft = replace(make_plan(bare, target), sync_type="full")
        self._metrics.plans.labels("full").inc()
        return PlanResponse(draft.etag, await self._render(stamp.node_id, draft, base_url))

    async def _target_spec(self, generation: int) -> TargetSpec:
        if self._target is not None and self._target[0] == generation:
            return self._target[1]
        target = await self._store.target()
        spec = TargetSpec(
            tuple(MigrationSpec(m.version, m.description, m.up_sql) for m in target.migrations),
            tuple(
                FunctionSpec(f.id, f.name, f.version, f.sha256, f.size_bytes, f.storage_key)
                for f in target.functions
            ),
        )
        self._target = (target.generation, spec)
        return spec

    async def _render(self, node_id: str, draft: PlanDraft, base_url: str) -> bytes:
        sync_id: str | None = None
        if not draft.is_empty:
            sync_id = await self._store.open_sync(
                SyncRecord(
                    id=str(uuid.uuid4()),
                    node_id=node_id,
                    sync_type=draft.sync_type,
                    status="pending",
                    plan_etag=draft.etag,
                    started_at=format_time(utcnow()),
                    completed_at=None,
                    error_code=None,
                    error_message=None,
                    functions_added=len(draft.deploys),
                    functions_removed=len(draft.removes),
                    schemas_applied=len(draft.schema),
                )
            )
        actions: list[dict[str, Any]] = [a.to_dict() for a in draft.schema]
        actions += [self.deploy_action(spec, base_url) for spec in draft.deploys]
        actions += [a.to_dict() for a in draft.removes]
        body = {
            "sync_id": sync_id,
            "etag": draft.etag,
            "target": draft.target.to_dict(),
            "actions": actions,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def deploy_action(self, spec: FunctionSpec, base_url: str) -> dict[str, Any]:
        """A deploy action whose URL nodes may fetch without a bearer token.

        With ``direct`` delivery and a store that can presign (S3/MinIO), nodes
        fetch from the store itself; otherwise from this control plane, behind
        its own HMAC-signed URL (``proxy``, and always for the folder store).
        """
        expires, signature = self._signer.sign(spec.id)
        url = None
        if self._delivery == "direct" and self._presign is not None:
            url = self._presign(spec.storage_key, self._signer.ttl_seconds)
        if url is None:
            url = (
                f"{base_url}/api/v1/functions/{spec.id}/download?expires={expires}&sig={signature}"
            )
        return {
            "type": "deploy_function",
            "function_id": spec.id,
            "name": spec.name,
            "version": spec.version,
            "sha256": spec.sha256,
            "size_bytes": spec.size_bytes,
            "download_url": url,
            "url_expires_at": format_time(datetime.fromtimestamp(expires, tz=utcnow().tzinfo)),
        }

    async def ack(self, node_id: str, ack: Ack) -> AckOutcome:
        now = utcnow()
        result = await self._store.record_ack(node_id, ack, now)
        if result.outcome == APPLIED:
            self._plans.pop(node_id, None)
            self._metrics.syncs.labels(ack.status).inc()
            elapsed = (now - parse_time(result.record.started_at)).total_seconds()
            self._metrics.sync_latency.labels(ack.status).observe(max(0.0, elapsed))
        return result
