"""The rollout engine: advances waves, applies the health gates, pauses or rolls back.

One replica decides at a time: each evaluation round first takes the lease row
(``rollout_lease``: owner and expiry, a plain UPDATE, no advisory lock or
LISTEN/NOTIFY, so it works on CockroachDB too) and gives it back after. Every
replica runs the loop (a ``cleanup_ctx`` task): it evaluates at least every
``interval`` seconds, and at once when one of its own writes touched a node of
a running rollout (an ack). All state is in the database, so a round may run on
any replica, and a restart of all of them resumes where the rollouts were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.rollouts.waves import over_budget
from appliance.services import SERVICES
from appliance.store.rollouts import RolloutRecord
from appliance.store.store import Store
from edgesync.protocol import format_time, parse_time, utcnow
from edgesync.waiting import raise_if_cancelling, wait_event

if TYPE_CHECKING:
    from appliance.store.transaction import Transaction

log = logging.getLogger("edgesync.rollouts")

DEFAULT_INTERVAL = 5.0


class RolloutEngine:
    def __init__(
        self,
        store: Store,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._interval = interval
        self.clock = clock
        self.owner = f"rollouts-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._watched: set[str] = set()  # nodes of running rollouts, as last evaluated

    # -- triggers ---------------------------------------------------------------------

    def committed(self, tx: Transaction) -> None:
        """A write of this process: an ack of a node in a running rollout wakes the loop."""
        if self._watched and tx.touched & self._watched:
            self._wake.set()

    def nudge(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await wait_event(self._wake, self._interval)
            raise_if_cancelling()
            self._wake.clear()
            try:
                await self.evaluate_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again; one bad round must not end the loop
                log.exception("rollout evaluation failed")

    # -- evaluation -------------------------------------------------------------------

    async def evaluate_all(self) -> int:
        """One round over every running rollout, if this replica holds the lease.
        Returns the number of rollouts evaluated (0 without the lease)."""
        ids = await self._store.active_rollout_ids()
        if not ids:
            self._watched = set()
            return 0
        if not await self._store.take_rollout_lease(
            self.owner, self.clock(), max(30.0, self._interval * 3)
        ):
            return 0
        try:
            watched: set[str] = set()
            for rollout_id in ids:
                watched |= await self.evaluate(rollout_id)
            self._watched = watched
        finally:
            await self._store.drop_rollout_lease(self.owner)
        return len(ids)

    async def evaluate(self, rollout_id: str) -> set[str]:
        """Record outcomes, move the rollout on; returns its nodes still to watch."""
        store = self._store
        target = await store.release_target((await store.get_rollout(rollout_id)).release_id)
        wanted = (target.schema_version, {(f.name, f.version, f.sha256) for f in target.functions})
        now = self.clock()

        async def step(tx: Transaction) -> set[str]:
            rollout = await store.load_rollout(tx, rollout_id)
            if rollout.state != "running":
                return set()
            rows = await store.rollout_node_rows(tx, rollout_id)
            await _record_outcomes(
                tx, rollout_id, [r for r in rows if r["state"] == "given"], wanted
            )
            rollout = await self._advance(tx, await store.load_rollout(tx, rollout_id), now)
            await store.save_rollout(tx, rollout)
            if rollout.state != "running":
                return set()
            return {r["node_id"] for r in rows}

        return await store._write(step)

    async def _advance(
        self, tx: Transaction, rollout: RolloutRecord, now: datetime
    ) -> RolloutRecord:
        settings = rollout.settings
        moment = format_time(now)
        index = rollout.current_wave
        wave = dict(rollout.waves[index])
        counts = rollout.counts.get(index, {})
        started = parse_time(wave["started_at"]) if wave.get("started_at") else now
        waiting = await _given(tx, rollout.id, index)
        if waiting and now >= started + timedelta(seconds=settings.wave_timeout_seconds):
            await _mark(tx, rollout.id, waiting, "failed")  # no ack in time counts as failed
            waiting = []
        observing = False
        if not waiting:
            if settings.observe_seconds > 0:
                if not wave.get("observe_until"):
                    wave["observe_until"] = format_time(
                        now + timedelta(seconds=settings.observe_seconds)
                    )
                observing = now < parse_time(wave["observe_until"])
            if settings.max_function_error_rate is not None:
                await _error_gate(tx, rollout, index, settings.max_function_error_rate, started)
        rollout = await self._store.load_rollout(tx, rollout.id)
        waves = [dict(w) for w in rollout.waves]
        waves[index].update({k: v for k, v in wave.items() if k == "observe_until"})
        rollout = replace(rollout, waves=waves, updated_at=moment)
        given = sum(
            c.get("applied", 0) + c.get("failed", 0) + (c.get("pending", 0) if i <= index else 0)
            for i, c in rollout.counts.items()
        )
        failures = rollout.failures - rollout.accepted_failures
        if over_budget(failures, given, settings.max_failures):
            if settings.auto_rollback:
                await self._store.give_back(tx, rollout)
                log.warning("rollout %s rolled back: %d failure(s)", rollout.id, failures)
                return replace(rollout, state="rolled_back")
            log.warning("rollout %s paused: %d failure(s)", rollout.id, failures)
            return replace(rollout, state="paused")
        del counts
        if waiting or observing:
            return rollout
        waves[index]["state"] = "done"
        rollout = replace(rollout, waves=waves)
        if index + 1 >= len(waves):
            return replace(rollout, state="completed")
        return await self._store.give_wave(tx, rollout, index + 1, now)


async def _given(tx: Transaction, rollout_id: str, index: int) -> list[str]:
    rows = await tx.fetchall(
        "SELECT node_id FROM rollout_nodes WHERE rollout_id = ? AND wave_index = ?"
        " AND state = 'given'",
        (rollout_id, index),
    )
    return [r["node_id"] for r in rows]


async def _mark(tx: Transaction, rollout_id: str, node_ids: list[str], state: str) -> None:
    for start in range(0, len(node_ids), 500):
        chunk = node_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        await tx.execute(
            f"UPDATE rollout_nodes SET state = ? WHERE rollout_id = ? AND node_id IN ({marks})",
            [state, rollout_id, *chunk],
        )


async def _record_outcomes(
    tx: Transaction, rollout_id: str, given: list[Any], wanted: tuple[int, set[Any]]
) -> None:
    """A given node has applied the release when its acked state is the release, and
    failed when a sync of it failed after it was given the release."""
    if not given:
        return
    failed = {
        r["node_id"]
        for r in await tx.fetchall(
            "SELECT DISTINCT s.node_id FROM sync_records s JOIN rollout_nodes rn"
            " ON rn.node_id = s.node_id WHERE rn.rollout_id = ? AND rn.state = 'given'"
            " AND s.status = 'failed' AND s.completed_at >= rn.given_at",
            (rollout_id,),
        )
    }
    held: dict[str, set[Any]] = {}
    for row in await tx.fetchall(
        "SELECT d.node_id, d.name, d.version, d.sha256 FROM node_function_deployments d"
        " JOIN rollout_nodes rn ON rn.node_id = d.node_id"
        " WHERE rn.rollout_id = ? AND rn.state = 'given'",
        (rollout_id,),
    ):
        held.setdefault(row["node_id"], set()).add((row["name"], row["version"], row["sha256"]))
    schema, functions = wanted
    applied = [
        r["node_id"]
        for r in given
        if r["node_id"] not in failed
        and int(r["current_schema_version"]) == schema
        and held.get(r["node_id"], set()) == functions
    ]
    await _mark(tx, rollout_id, sorted(failed), "failed")
    await _mark(tx, rollout_id, applied, "applied")


async def _error_gate(
    tx: Transaction, rollout: RolloutRecord, index: int, limit: float, since: datetime
) -> None:
    """Applied nodes of the wave whose functions' error rate since the wave started
    is above ``limit`` count as failed."""
    rows = await tx.fetchall(
        "SELECT c.node_id, SUM(c.invocations) AS calls, SUM(c.errors) AS errors"
        " FROM function_counters c JOIN rollout_nodes rn ON rn.node_id = c.node_id"
        " WHERE rn.rollout_id = ? AND rn.wave_index = ? AND rn.state = 'applied'"
        " AND c.reported_at >= ? GROUP BY c.node_id",
        (rollout.id, index, format_time(since)),
    )
    bad = [
        r["node_id"]
        for r in rows
        if int(r["calls"] or 0) > 0 and int(r["errors"] or 0) / int(r["calls"]) > limit
    ]
    if bad:
        await _mark(tx, rollout.id, bad, "failed")


ROLLOUTS = web.AppKey("rollouts", RolloutEngine)


async def rollouts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every replica's engine loop (a ``cleanup_ctx``, after the services)."""
    svc = app[SERVICES]
    engine = RolloutEngine(svc.store, interval=svc.config.rollout_interval)
    app[ROLLOUTS] = engine
    svc.store.add_commit_listener(engine.committed)  # an ack wakes it at once
    task = asyncio.create_task(engine.run(), name="edgesync-rollouts")
    try:
        yield
    finally:
        svc.store.remove_commit_listener(engine.committed)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
