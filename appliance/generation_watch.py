"""The fleet watch: every replica reads the generation and the node change feed about once a second.

Changes that alter plans bump the fleet generation in the database; changes to
one node's stamp (token rotation, an applied ack) add a row to the node change
feed (``store/node_changes.py``). A replica learns its own at once (the store's
commit listeners); the others' only by looking, and CockroachDB offers nothing
to be told with (no LISTEN/NOTIFY, no advisory locks). So each replica runs
this watch, MQTT or not: it hands every generation it reads to the
``FleetCache`` (which forgets what the new one outdates), the nodes the feed
names (whose stamps it forgets), and tells its listeners (the MQTT notifier)
when the generation moved. On a shared database that is two indexed reads a
second per replica, and a prune of old feed rows now and then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.periodic import Periodic

log = logging.getLogger("edgesync.watch")

# Under the 1 s staleness bound with room for the reads themselves: the cache
# trusts a stamp while the feed's last read began at most 1 s ago.
WATCH_INTERVAL_SECONDS = 0.8
PRUNE_EVERY_STEPS = 75  # about once a minute


@dataclass(frozen=True)
class ChangeFeed:
    """The node change feed's side of the watch (shared databases only)."""

    read: Callable[[], Awaitable[set[str]]]  # nodes changed since the last read
    saw: Callable[[set[str], float], None]  # (those nodes, when the read began)
    prune: Callable[[], Awaitable[object]]


class GenerationWatch:
    def __init__(
        self,
        read: Callable[[], Awaitable[int]],
        saw: Callable[[int], None],
        *,
        feed: ChangeFeed | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self._read = read
        self._saw = saw
        self._feed = feed
        self._clock = clock
        self._steps = 0
        self.last: int | None = None
        self.listeners: list[Callable[[int], None]] = []
        # The first step runs at once (wake), so the cache learns the generation early.
        self._loop = Periodic(
            "edgesync-generation-watch",
            self.step,
            interval,
            log,
            lambda: (
                "fleet generation or node changes not readable;"
                " cached stamps expire by their TTL meanwhile"
            ),
        )

    async def step(self) -> int:
        """Read the generation (and the change feed) once, hand them on; return it."""
        started = self._clock()
        generation = await self._read()
        self._saw(generation)
        if generation != self.last:
            self.last = generation
            for listener in list(self.listeners):
                listener(generation)
        if self._feed is not None:
            # After the listeners: a feed that cannot be read must not hold back
            # the news of a generation (stamps then fall back to their TTL).
            self._feed.saw(await self._feed.read(), started)
            self._steps += 1
            if self._steps % PRUNE_EVERY_STEPS == 0:
                await self._feed.prune()
        return generation

    def wake(self) -> None:
        """Look now (this process committed a bump) instead of at the next tick."""
        self._loop.wake()

    def start(self) -> None:
        self._loop.start()
        self._loop.wake()

    async def close(self) -> None:
        await self._loop.close()
