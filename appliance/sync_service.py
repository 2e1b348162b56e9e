"""Serving plans and recording acks, in front of the planner and the FleetCache.

A node's plan depends on the fleet generation (bumped by every change to any
target), its release and its state revision (bumped by every applied ack):
the ``FleetCache`` keys plans by exactly that, so a cached plan is never
stale; its TTL only keeps signed URLs well inside their validity.

Plans for nodes on the same release in the same state share their rendering
(target and actions, signed URLs included: they sign the function, not the
node); only the sync id and the ETag are spliced in per node. A release to a
big fleet therefore costs one rendering, and one sync record per node.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import quote

from appliance.fleet_cache import CachedPlan, FleetCache, PlanKey
from appliance.metrics import Metrics
from appliance.planner import FunctionSpec, NodeView, PlanDraft, make_plan
from appliance.rate_limit import SlidingWindowLimit
from appliance.signing import UrlSigner
from appliance.store.records import NodeStamp, SyncRecord
from appliance.store.store import Store
from appliance.store.syncs import APPLIED, AckOutcome
from edgesync.protocol import (
    Ack,
    Action,
    DeployFunction,
    NodeState,
    Plan,
    format_time,
    parse_time,
    utcnow,
)

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


@dataclass(frozen=True)
class PlanResponse:
    etag: str
    body: bytes | None  # None: answer 304 Not Modified


class SyncService:
    def __init__(
        self,
        store: Store,
        cache: FleetCache,
        signer: UrlSigner,
        metrics: Metrics,
        *,
        delivery: str = "proxy",
        presign: Callable[[str, int], str | None] | None = None,
        artifact_public_url: str | None = None,
    ) -> None:
        self._store = store
        self.cache = cache
        self._signer = signer
        self._metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        self._delivery = delivery
        self._presign = presign
        self._public_artifacts = artifact_public_url.rstrip("/") if artifact_public_url else None
        self._not_modified = metrics.plans.labels("not_modified")  # bound once: hot path
        self._full = metrics.plans.labels("full")
        self._full_plans = SlidingWindowLimit(FULL_PLANS_PER_WINDOW, FULL_PLAN_WINDOW_SECONDS)

    async def plan(
        self, stamp: NodeStamp, if_none_match: str | None, base_url: Callable[[], str]
    ) -> PlanResponse:
        cached = self.cache.cached_plan(stamp)
        if cached is not None and (
            cached.body is not None or etag_matches(cached.etag, if_none_match)
        ):
            return self._answer(cached.etag, cached.body, if_none_match)
        # One plan (and so one sync record) per node at a time.
        async with self._locks.setdefault(stamp.node_id, asyncio.Lock()):
            cached = self.cache.cached_plan(stamp)
            if cached is None or (
                cached.body is None and not etag_matches(cached.etag, if_none_match)
            ):
                cached = await self._build(stamp, if_none_match, base_url)
            return self._answer(cached.etag, cached.body, if_none_match)

    def _answer(self, etag: str, body: bytes | None, if_none_match: str | None) -> PlanResponse:
        if etag_matches(etag, if_none_match):
            self._not_modified.inc()
            return PlanResponse(etag, None)
        self._full.inc()
        return PlanResponse(etag, body)

    async def _build(
        self, stamp: NodeStamp, if_none_match: str | None, base_url: Callable[[], str]
    ) -> CachedPlan:
        epoch = self.cache.epoch
        node = await self._store.get_node(stamp.node_id)
        target = await self.cache.target(stamp.generation, stamp.release_id)
        draft = make_plan(NodeView(node.state(), node.state_seq), target)
        body: bytes | None = None
        # A node that already holds this exact plan needs no new sync record.
        if not etag_matches(draft.etag, if_none_match):
            key = PlanKey.of(stamp)
            body = await self._render(stamp.node_id, draft, node.state(), key, base_url(), epoch)
        return self.cache.keep_plan(stamp, draft.etag, body, epoch)

    async def full_plan(self, stamp: NodeStamp, base_url: str) -> PlanResponse:
        """The plan as if the node held no functions, never cached.

        For a node whose module cache lost a file: every target function comes
        with a download, so the node can fetch again what it no longer has.
        Asking again for the same plan hands out the same open sync record, and
        a node may ask at most ``FULL_PLANS_PER_WINDOW`` times a window (429).
        """
        self._full_plans.check(stamp.node_id, "full plans")
        epoch = self.cache.epoch
        node = await self._store.get_node(stamp.node_id)
        target = await self.cache.target(stamp.generation, stamp.release_id)
        bare_state = NodeState(node.current_schema_version, ())
        draft = replace(make_plan(NodeView(bare_state, node.state_seq), target), sync_type="full")
        self._full.inc()
        body = await self._render(
            stamp.node_id, draft, bare_state, PlanKey.of(stamp), base_url, epoch
        )
        return PlanResponse(draft.etag, body)

    async def _render(
        self,
        node_id: str,
        draft: PlanDraft,
        state: NodeState,
        key: PlanKey,
        base_url: str,
        epoch: int,
    ) -> bytes:
        """The plan's JSON: the shared rendering with this node's sync id and ETag."""
        sync_id = None if draft.is_empty else await self._open_sync(node_id, draft)
        shared_key = (key.generation, key.release_id, state.digest(), draft.sync_type, base_url)
        fragment = self.cache.rendering(shared_key)
        if fragment is None:
            fragment = self._fragment(draft, base_url)
            self.cache.keep_rendering(shared_key, fragment, epoch)
        head = f'{{"sync_id":{json.dumps(sync_id)},"etag":{json.dumps(draft.etag)},'
        return head.encode() + fragment + b"}"

    def _fragment(self, draft: PlanDraft, base_url: str) -> bytes:
        """``"target":…,"actions":[…]`` of the plan, through the protocol's types."""
        actions: tuple[Action, ...] = (
            *draft.actions(),
            *(self.deploy_action(spec, base_url) for spec in draft.deploys),
            *draft.removes,
        )
        plan = Plan(None, draft.etag, draft.target, actions).to_dict()
        shared = {"target": plan["target"], "actions": plan["actions"]}
        return json.dumps(shared, separators=(",", ":")).encode()[1:-1]

    async def _open_sync(self, node_id: str, draft: PlanDraft) -> str:
        return await self._store.open_sync(
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
                schemas_applied=len(draft.schema) + len(draft.reverts),
            )
        )

    def deploy_action(self, spec: FunctionSpec, base_url: str) -> DeployFunction:
        """A deploy action whose URL nodes may fetch without a bearer token.

        With ``direct`` delivery: through the public artifact URL when one is set
        (a CDN or caching proxy in front of the bucket; integrity rests on the
        plan's SHA-256), else presigned by the store (S3/MinIO). Otherwise from
        this control plane, behind its own HMAC-signed URL (``proxy``, and
        always for the folder store).
        """
        expires, signature = self._signer.sign(spec.id)
        url = None
        if self._delivery == "direct":
            if self._public_artifacts is not None and spec.storage_key:
                url = f"{self._public_artifacts}/{quote(spec.storage_key, safe='/')}"
            elif self._presign is not None:
                url = self._presign(spec.storage_key, self._signer.ttl_seconds)
        if url is None:
            url = (
                f"{base_url}/api/v1/functions/{spec.id}/download?expires={expires}&sig={signature}"
            )
        return DeployFunction(
            function_id=spec.id,
            name=spec.name,
            version=spec.version,
            sha256=spec.sha256,
            size_bytes=spec.size_bytes,
            download_url=url,
            url_expires_at=format_time(datetime.fromtimestamp(expires, tz=utcnow().tzinfo)),
        )

    async def ack(self, node_id: str, ack: Ack) -> AckOutcome:
        now = utcnow()
        result = await self._store.record_ack(node_id, ack, now)
        if result.outcome == APPLIED:
            self._metrics.syncs.labels(ack.status).inc()
            elapsed = (now - parse_time(result.record.started_at)).total_seconds()
            self._metrics.sync_latency.labels(ack.status).observe(max(0.0, elapsed))
        return result
