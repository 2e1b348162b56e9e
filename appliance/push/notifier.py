"""Turning fleet changes into MQTT notifications, on every replica.

Every change that alters plans bumps the fleet generation and records a
``fleet_changes`` row in the same transaction (``Store._bump_generation``).
Each replica runs one :class:`Notifier`: it wakes at once when this process
committed such a change, and otherwise looks at the database every
``interval`` seconds for changes other replicas made. Whatever is new is
published to this replica's broker, coalesced to one message per topic per
round carrying the newest generation. There is no replica-to-replica link.

A broker that is down or refuses costs latency, never correctness: the
messages stay pending and are retried with backoff, the API never waits for
the broker, and agents keep polling on their interval anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from appliance.push.broker import Publisher, PublishFailed
from appliance.store.store import Store
from appliance.store.transaction import Transaction
from edgesync.mqtt import FLEET_TOPIC, Notification, node_topic
from edgesync.waiting import raise_if_cancelling, wait_event

log = logging.getLogger("edgesync.mqtt")

RETRY_CAP_SECONDS = 30.0


@dataclass
class NotifierStats:
    published: int = 0
    failures: int = 0
    last_generation: int | None = None


class Notifier:
    """Watches the fleet generation and publishes what changed (see the module doc)."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        *,
        interval: float = 1.0,
        saw_generation: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        # The poll path's cache hears of every generation read here before any node
        # does: a node woken by a notification must not be answered from the old one.
        self._saw_generation = saw_generation
        self._publisher = publisher
        self.interval = interval
        self._wake = asyncio.Event()
        self._last: int | None = None
        # topic -> (generation, reason): what still has to be published.
        self._pending: dict[str, tuple[int, str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.stats = NotifierStats()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start from the current generation (what came before is not news) and run."""
        try:
            self._last = await self._store.generation()
        except Exception as exc:  # the loop takes the generation once it can
            log.warning("fleet generation not readable yet: %s", type(exc).__name__)
        self._store.add_commit_listener(self._committed)
        self._task = asyncio.create_task(self._run(), name="edgesync-mqtt-notifier")

    async def close(self) -> None:
        self._store.remove_commit_listener(self._committed)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _committed(self, tx: Transaction) -> None:
        if tx.bumped:
            self.wake()

    def wake(self) -> None:
        """This process committed a change: look now instead of at the next tick."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            delay = self.interval if not failures else self._retry_delay(failures)
            await wait_event(self._wake, delay)
            raise_if_cancelling()
            self._wake.clear()
            try:
                await self.step()
            except Exception as exc:
                failures += 1
                self.stats.failures += 1
                # Loud on the first failures, then now and then: a broker may be down for long.
                loud = failures in (1, 5) or failures % 50 == 0
                log.log(
                    logging.WARNING if loud else logging.DEBUG,
                    "MQTT notifications pending (%d failed rounds): %s",
                    failures,
                    exc,
                )
            else:
                failures = 0

    def _retry_delay(self, failures: int) -> float:
        return min(RETRY_CAP_SECONDS, max(self.interval, 0.5 * 2 ** (failures - 1)))

    async def step(self) -> None:
        """One round: collect new changes from the database, publish what is pending."""
        await self._collect()
        await self._flush()

    async def _collect(self) -> None:
        current = await self._store.generation()
        if self._saw_generation is not None:
            self._saw_generation(current)
        last = self._last
        if last is None or current < last:  # first read, or a database restored from backup
            self._last = current
            return
        if current == last:
            return
        changes = await self._store.fleet_changes(after=last, upto=current)
        seen: set[int] = set()
        for change in changes:
            seen.add(change.generation)
            topics = [node_topic(n) for n in change.node_ids] if change.node_ids else [FLEET_TOPIC]
            for topic in topics:
                self._queue(topic, change.generation, change.reason)
        missing = set(range(last + 1, current + 1)) - seen
        if missing:  # pruned, or bumped before changes were recorded: tell everyone
            self._queue(FLEET_TOPIC, max(missing), "changed")
        self._last = current
        self.stats.last_generation = current

    def _queue(self, topic: str, generation: int, reason: str) -> None:
        queued = self._pending.get(topic)
        if queued is None or queued[0] < generation:
            self._pending[topic] = (generation, reason)

    async def _flush(self) -> None:
        for topic, (generation, reason) in sorted(self._pending.items()):
            payload = Notification(reason, f"g{generation}").encode()
            try:
                await self._publisher.publish(topic, payload)
            except PublishFailed:
                raise
            except Exception as exc:  # a broker bug must not end the loop either
                raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
            # Only now: a newer change queued while we published stays pending.
            if self._pending.get(topic) == (generation, reason):
                del self._pending[topic]
            self.stats.published += 1
            log.debug("notified %s: %s (g%d)", topic, reason, generation)
