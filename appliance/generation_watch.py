"""The fleet-generation watch: every replica reads the generation about once a second.

Changes that alter plans bump the fleet generation in the database. A replica
learns its own at once (the store's commit listeners); the others' only by
looking, and CockroachDB offers nothing to be told with (no LISTEN/NOTIFY, no
advisory locks). So each replica runs this watch, MQTT or not: it hands every
generation it reads to the ``FleetCache`` (which forgets what the new one
outdates) and tells its listeners (the MQTT notifier) when it moved. One
indexed single-row read a second per replica is the whole cost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from appliance.periodic import Periodic

log = logging.getLogger("edgesync.watch")

WATCH_INTERVAL_SECONDS = 1.0


class GenerationWatch:
    def __init__(
        self,
        read: Callable[[], Awaitable[int]],
        saw: Callable[[int], None],
        *,
        interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self._read = read
        self._saw = saw
        self.last: int | None = None
        self.listeners: list[Callable[[int], None]] = []
        # The first step runs at once (wake), so the cache learns the generation early.
        self._loop = Periodic(
            "edgesync-generation-watch",
            self.step,
            interval,
            log,
            lambda: "fleet generation not readable; caches expire by their TTL meanwhile",
        )

    async def step(self) -> int:
        """Read the generation once, hand it on; return it."""
        generation = await self._read()
        self._saw(generation)
        if generation != self.last:
            self.last = generation
            for listener in list(self.listeners):
                listener(generation)
        return generation

    def wake(self) -> None:
        """Look now (this process committed a bump) instead of at the next tick."""
        self._loop.wake()

    def start(self) -> None:
        self._loop.start()
        self._loop.wake()

    async def close(self) -> None:
        await self._loop.close()
