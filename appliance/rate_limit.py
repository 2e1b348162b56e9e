"""A per-key sliding-window limit for requests a node may make only now and then.

The only user today is the full plan (``GET /nodes/{id}/sync?full=true``): it
is never cached, renders a download for every target function and is meant
for a node whose module cache lost a file, not for polling. The window is kept
per replica: a node spreading its requests over N replicas gets N times the
allowance, which still bounds it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from edgesync.errors import RateLimited


class SlidingWindowLimit:
    """At most ``limit`` events per ``window_seconds`` per key."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        max_keys: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self._max_keys = max_keys
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def check(self, key: str, what: str) -> None:
        """Count one event for ``key``, or raise :class:`RateLimited` (429) past the limit."""
        now = self._clock()
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self._max_keys:
                self._forget_idle(now)
            events = self._events[key] = deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            wait = max(1, math.ceil(events[0] + self.window - now))
            raise RateLimited(
                f"too many {what}: at most {self.limit} per {self.window:g} s",
                retry_after=wait,
                details={"limit": self.limit, "window_seconds": self.window},
            )
        events.append(now)

    def _forget_idle(self, now: float) -> None:
        idle = [
            key
            for key, events in self._events.items()
            if not events or events[-1] <= now - self.window
        ]
        for key in idle:
            del self._events[key]
        if len(self._events) >= self._max_keys:  # all busy: drop the oldest keys
            for key in list(self._events)[: len(self._events) // 10 or 1]:
                del self._events[key]
