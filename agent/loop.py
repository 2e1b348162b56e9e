"""The agent's life: enroll once, then poll, reconcile and report, forever.

``Agent.sync_once()`` is one step (token rotation, a heartbeat when there is
news, plan, release, ack) and knows nothing of time; ``Agent.run()`` repeats it on the poll
interval with jitter, or on the retry schedule after a failure, through an
injectable :class:`~agent.backoff.Clock`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import datadir
from agent.api import ControlPlane
from agent.artifacts import ArtifactCache
from agent.backoff import (
    DEFAULT_POLL_SECONDS,
    RETRY_CAP_SECONDS,
    Clock,
    RandomSource,
    RealClock,
    jittered,
    jittered_retry,
    retry_delay,
    valid_poll_interval,
)
from agent.config import AgentConfig
from agent.counters import put_back
from agent.credentials import Credentials
from agent.edgedb import EdgeDatabase
from agent.failures import PLAN_REJECTED, classify, error_info
from agent.reconcile import Reconciler
from agent.runtime.base import Runtime
from edgesync.errors import EdgesyncError
from edgesync.protocol import Ack, ErrorInfo, NodeState, Plan, format_time, utcnow

log = logging.getLogger("edgesync.agent")

STATUS_FILE = "agent-status.json"
# Rotate once less than this share of the token's lifetime remains (at most 30 days).
ROTATE_AT_REMAINING = 1 / 3
ROTATE_AT_MOST_SECONDS = 30 * 24 * 3600
# The poll carries the node's liveness; a heartbeat goes out only with something
# new to report (state, a pending report) or after this many intervals without one.
HEARTBEAT_EVERY_INTERVALS = 10


@dataclass
class Outcome:
    """What one ``sync_once`` did. ``kind``: unchanged, converged, applied, failed,
    rejected, unreachable."""

    kind: str
    error: EdgesyncError | None = None
    state: NodeState | None = None

    @property
    def ok(self) -> bool:
        return self.kind in ("unchanged", "converged", "applied")


@dataclass
class _Outage:
    """Since when syncs fail, so that losing and regaining the control plane is
    logged once each instead of once per retry."""

    since: float | None = None
    tries: int = 0


@dataclass
class _PlanTries:
    current: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        runtime: Runtime,
        *,
        clock: Clock | None = None,
        rng: RandomSource | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.runtime = runtime
        self.clock = clock or RealClock()
        self.rng: RandomSource = rng or random.Random()
        self.data_dir = config.data_dir
        self.wake = asyncio.Event()
        # Called after each token rotation (the MQTT push listener reconnects).
        self.token_listeners: list[Callable[[], None]] = []
        self.stopping = False
        self.credentials: Credentials | None = None
        self.api: ControlPlane | None = None
        self.database: EdgeDatabase | None = None
        self.reconciler: Reconciler | None = None
        self._etag: str | None = None
        self._tries = _PlanTries()
        self._transient_failures = 0
        self._last: Outcome | None = None
        self._last_sync_at: str | None = None
        self._outage = _Outage()
        self._refused_poll_interval: object = None  # warned about once
        # What the next heartbeat must carry besides liveness (e.g. per-function
        # counters): fields of the heartbeat body. A non-empty report makes the next
        # interval send a heartbeat; it is cleared once delivered.
        self.pending_report: dict[str, Any] = {}
        self._reported_state: str | None = None  # state digest of the last heartbeat
        self._intervals_since_heartbeat = 0

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Enroll (first start) or load credentials; open the database; serve the current state."""
        datadir.prepare(self.data_dir)  # 0700, and nothing wider inside
        self.credentials = Credentials.load(self.data_dir)
        self.api = ControlPlane(
            self.credentials.server if self.credentials else self.config.server,
            token=self.credentials.token if self.credentials else None,
            ca_file=self.config.ca_file,
        )
        if self.credentials is None:
            self.credentials = await self._enroll()
        self.api.server = self.config.server.rstrip("/")
        # Created 0600 before SQLite opens it (its -wal and -shm take the same mode).
        database = datadir.create_database(self.data_dir)
        try:
            self.database = await asyncio.to_thread(EdgeDatabase, database)
        except (sqlite3.Error, ValueError) as exc:  # libsql raises ValueError
            raise datadir.unreadable(database, exc) from exc
        self.reconciler = Reconciler(
            self.data_dir,
            self.database,
            ArtifactCache(self.data_dir),
            self.runtime,
            self.api.download,
        )
        await self.reconciler.start()

    async def _enroll(self) -> Credentials:
        assert self.api is not None
        if not self.config.enrollment_token:
            raise EdgesyncError(
                f"{self.data_dir} holds no credentials: pass --enrollment-token to register",
                code="NOT_ENROLLED",
            )
        name = self.config.name or os.uname().nodename
        answer = await self.api.register(
            self.config.enrollment_token, name, self.config.region, self.config.labels
        )
        fields = ("node_id", "token", "token_expires_at")
        if not all(isinstance(answer.get(key), str) for key in fields):
            raise EdgesyncError(
                f"{self.api.server} answered the registration without {', '.join(fields)}",
                code="BAD_RESPONSE",
            )
        mqtt = answer.get("mqtt")
        credentials = Credentials(
            server=self.config.server.rstrip("/"),
            node_id=answer["node_id"],
            token=answer["token"],
            token_expires_at=answer["token_expires_at"],
            name=name,
            # Kept as said; checked where it is used (poll_interval).
            poll_interval_seconds=answer.get("poll_interval_seconds", DEFAULT_POLL_SECONDS),
            mqtt=mqtt if isinstance(mqtt, dict) else None,
        )
        credentials.save(self.data_dir)
        self.api.token = credentials.token
        log.info("registered as node %s", credentials.node_id)
        return credentials

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
        if self.database is not None:
            await asyncio.to_thread(self.database.close)
        self.runtime.close()

    def stop(self) -> None:
        """Finish the sync in flight, then leave ``run``."""
        self.stopping = True
        self.wake.set()

    @property
    def node_id(self) -> str:
        assert self.credentials is not None
        return self.credentials.node_id

    @property
    def poll_interval(self) -> float:
        """``--poll-interval``, else the control plane's if it is sane, else 30 s."""
        if self.config.poll_interval_seconds is not None:
            return self.config.poll_interval_seconds
        told = self.credentials.poll_interval_seconds if self.credentials else None
        seconds = valid_poll_interval(told)
        if seconds is not None:
            return seconds
        if told is not None and repr(told) != repr(self._refused_poll_interval):
            self._refused_poll_interval = told
            log.warning(
                "ignoring the control plane's poll interval %.40r (not a number of seconds"
                " between 1 and 86400); polling every %g s",
                told,
                DEFAULT_POLL_SECONDS,
            )
        return DEFAULT_POLL_SECONDS

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        while not self.stopping:
            # Cleared before the sync, not after it: a push notification arriving
            # while this sync runs then causes exactly one more, instead of being lost.
            self.wake.clear()
            outcome = await self.sync_once()
            delay = self.next_delay(outcome)
            if self.stopping:
                break
            await self.clock.sleep(delay, self.wake)

    def next_delay(self, outcome: Outcome) -> float:
        """Transient failures: full jitter under the documented schedule (a fleet cut off
        together must not come back in lockstep). A plan tried again: the schedule."""
        if outcome.kind == "unreachable":
            return jittered_retry(self._transient_failures, self.rng)
        if outcome.kind == "failed" and outcome.error is not None:
            if outcome.error.retryable:
                return jittered_retry(self._transient_failures, self.rng)
            return retry_delay(self._tries.counts.get(self._tries.current or "", 1))
        return jittered(self.poll_interval, self.rng)

    async def sync_once(self) -> Outcome:
        """Maybe heartbeat, maybe rotate the token, fetch the plan, apply it, ack."""
        assert self.api is not None and self.reconciler is not None
        self.api.follow_poll_interval(self.poll_interval)  # keep the connection across it
        try:
            local = await self.reconciler.local_state()
            await self._maybe_rotate()
            await self._maybe_heartbeat(local)
            # A module gone from the cache (disk fault, tampering) is not served:
            # ask for the plan as if the node held no functions, to fetch it again.
            repair = bool(self.reconciler.missing_modules(local))
            plan = await self.api.plan(
                self.node_id, None if repair else self._etag, full=repair, state=local
            )
        except Exception as exc:
            self._transient_failures += 1
            error = classify(exc)
            self._lost(error)
            return self._record(Outcome("unreachable", error))
        self._transient_failures = 0
        self._regained()
        if plan is None:
            return self._record(Outcome("unchanged", state=local))
        if not repair:
            self._etag = plan.etag
        if plan.is_empty or plan.sync_id is None:
            return self._record(Outcome("converged", state=local))
        return self._record(await self._release(plan))

    def heartbeat_due(self, local: NodeState) -> bool:
        """A converged node's poll is its liveness; a heartbeat is for news."""
        assert self.api is not None
        return (
            not self.api.liveness_on_poll  # an older control plane, or no poll answered yet
            or bool(self.pending_report)
            or local.digest() != self._reported_state
            or self._intervals_since_heartbeat + 1 >= HEARTBEAT_EVERY_INTERVALS
        )

    async def _maybe_heartbeat(self, local: NodeState) -> None:
        assert self.api is not None
        if not self.heartbeat_due(local):
            self._intervals_since_heartbeat += 1
            return
        report, self.pending_report = self.pending_report, {}
        try:
            await self.api.heartbeat(self.node_id, local, report)
        except BaseException:
            put_back(self.pending_report, report)  # not delivered: the next interval tries again
            raise
        self._reported_state = local.digest()
        self._intervals_since_heartbeat = 0

    async def _release(self, plan: Plan) -> Outcome:
        assert self.api is not None and self.reconciler is not None and plan.sync_id
        key = plan.target.digest()
        if key in self._tries.rejected:
            return Outcome("rejected", state=await self.reconciler.local_state())
        try:
            state = await self.reconciler.apply(plan)
        except Exception as exc:
            error = classify(exc)
            state = await self.reconciler.local_state()
            log.warning("release %s failed: %s", plan.sync_id, error)
            if error.retryable:
                self._transient_failures += 1
                await self._ack(plan.sync_id, "failed", state, error_info(error))
                # Keep what the retry will need (its downloads), drop anything else.
                self.reconciler.collect(state, also_keep=plan.target.functions)
                return Outcome("failed", error, state)
            tries = self._tries.counts.get(key, 0) + 1
            # Only the target being tried counts: a newer target starts afresh.
            self._tries.counts = {key: tries}
            self._tries.current = key
            if tries < self.config.max_tries:
                await self._ack(plan.sync_id, "failed", state, error_info(error))
                self.reconciler.collect(state, also_keep=plan.target.functions)
                return Outcome("failed", error, state)
            self.reconciler.collect(state)
            return await self._reject(plan, key, tries, error, state)
        self._tries.counts.pop(key, None)
        self._transient_failures = 0
        await self._ack(plan.sync_id, "success", state, None)
        self.reconciler.collect(state)
        self._last_sync_at = format_time(utcnow())
        log.info(
            "release %s applied: schema %s, %d functions",
            plan.sync_id,
            state.schema_version,
            len(state.functions),
        )
        return Outcome("applied", state=state)

    async def _reject(
        self, plan: Plan, key: str, tries: int, error: EdgesyncError, state: NodeState
    ) -> Outcome:
        assert plan.sync_id is not None
        details = {"tries": tries, "last_error": error_info(error).to_dict()}
        self._tries.rejected[key] = {"target": plan.target.to_dict(), **details}
        self._tries.counts.pop(key, None)
        rejection = ErrorInfo(
            PLAN_REJECTED,
            f"plan rejected after {tries} tries: {error.message}"[:2000],
            details,
            False,
        )
        await self._ack(plan.sync_id, "failed", state, rejection)
        log.error("plan for target %s rejected after %d tries", key, tries)
        return Outcome("rejected", error, state)

    async def _ack(
        self, sync_id: str, status: str, state: NodeState, error: ErrorInfo | None
    ) -> None:
        """Best effort: a lost ack is repaired by the next poll (target == local state)."""
        assert self.api is not None
        try:
            await self.api.ack(self.node_id, Ack(sync_id, status, state, error))  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("ack of %s not delivered: %s", sync_id, classify(exc))

    async def _maybe_rotate(self) -> None:
        assert self.api is not None and self.credentials is not None
        if self.credentials.pending_jti is None:  # else: finish an interrupted rotation
            issued, expires = _token_lifetime(self.credentials.token)
            if expires is None:
                return
            lifetime = expires - (issued if issued is not None else expires - 90 * 86400)
            remaining = expires - self.clock.time()
            if remaining > min(ROTATE_AT_MOST_SECONDS, lifetime * ROTATE_AT_REMAINING):
                return
            self.credentials.pending_jti = uuid.uuid4().hex
            self.credentials.save(self.data_dir)  # before asking: the answer may be lost
        answer = await self.api.rotate_token(self.node_id, self.credentials.pending_jti)
        self.credentials.token = answer["token"]
        self.credentials.token_expires_at = answer["token_expires_at"]
        self.credentials.pending_jti = None
        self.credentials.save(self.data_dir)
        self.api.token = self.credentials.token
        log.info("node token rotated; new one expires %s", self.credentials.token_expires_at)
        for listener in self.token_listeners:  # e.g. MQTT push logs in again
            listener()

    def _lost(self, error: EdgesyncError) -> None:
        """Log the first failed sync of an outage (WARNING); the retries only at DEBUG."""
        outage = self._outage
        outage.tries += 1
        if outage.since is not None:
            log.debug("sync try %d failed: %s", outage.tries, error)
            return
        outage.since = self.clock.time()
        log.warning(
            "lost the control plane: %s; serving the current release and retrying"
            " with backoff (at most %g s apart)",
            error,
            RETRY_CAP_SECONDS,
        )

    def _regained(self) -> None:
        outage = self._outage
        if outage.since is None:
            return
        log.info(
            "control plane %s reachable again after %d failed syncs (%.0f s)",
            self.api.server if self.api else self.config.server,
            outage.tries,
            max(0.0, self.clock.time() - outage.since),
        )
        self._outage = _Outage()

    # -- status ---------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> Outcome:
        self._last = outcome
        try:
            self._write_status(outcome)
        except OSError as exc:
            log.warning("cannot write %s: %s", STATUS_FILE, exc)
        return outcome

    def _write_status(self, outcome: Outcome) -> None:
        status = {
            "node_id": self.node_id,
            "server": self.api.server if self.api else None,
            "runtime": self.runtime.name,
            "runtime_version": self.runtime.version,
            "updated_at": format_time(utcnow()),
            "last_outcome": outcome.kind,
            "last_error": error_info(outcome.error).to_dict() if outcome.error else None,
            "last_sync_at": self._last_sync_at,
            "plan_etag": self._etag,
            "pending_tries": dict(self._tries.counts),
            "rejected_plans": list(self._tries.rejected.values()),
            "pid": os.getpid(),
        }
        datadir.write_private(self.data_dir / STATUS_FILE, json.dumps(status, indent=2).encode())


def _token_lifetime(token: str) -> tuple[float | None, float | None]:
    """``(iat, exp)`` from a JWT's payload, read without verification (it is our own)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        iat, exp = claims.get("iat"), claims.get("exp")
        return (float(iat) if iat else None), (float(exp) if exp else None)
    except (IndexError, ValueError):
        return None, None
