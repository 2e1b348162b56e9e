"""Time for the agent: the retry schedule, jitter, and an injectable clock and dice.

The loop never calls ``asyncio.sleep``, ``time`` or ``random`` directly: tests
drive it with a fake clock and a chosen random source and check the schedule
without waiting for wall time.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Protocol

from edgesync.waiting import wait_event

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0
DEFAULT_POLL_SECONDS = 30.0
# The control plane's poll interval is trusted only within these bounds (serve allows 1 s
# to a day): below, the node would hammer it; above, it would look dead.
MIN_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 86400.0


class RandomSource(Protocol):
    """What the loop needs of :class:`random.Random`; tests inject their own."""

    def uniform(self, a: float, b: float) -> float: ...


def retry_delay(failures: int) -> float:
    """The documented ceiling of the delay after ``failures`` consecutive failures.

    0, 1, 2, 4, 8, 16, 32, then 60 s forever. Permanent failures (a plan tried
    again, five times at most) wait exactly this long.
    """
    if failures <= 1:
        return 0.0
    return min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** min(failures - 2, 32))


def jittered_retry(failures: int, rng: RandomSource) -> float:
    """Full jitter (AWS): uniform in [0, ``retry_delay(failures)``].

    A fleet cut off at the same instant then comes back spread over the whole
    window instead of in lockstep; the schedule's bounds stay the documented ones.
    """
    return rng.uniform(0.0, retry_delay(failures))


def jittered(interval: float, rng: RandomSource | None = None) -> float:
    """``interval`` ± 10 %, so a fleet restarted together does not poll in lockstep."""
    return interval * (rng or random).uniform(0.9, 1.1)


def valid_poll_interval(value: object) -> float | None:
    """``value`` as seconds if it is a sane poll interval (a real number in bounds), else None.

    Refused: bool, strings, NaN, infinities, below 1 s (``int(0.5)`` once meant no pause
    at all), above a day.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or not MIN_POLL_SECONDS <= seconds <= MAX_POLL_SECONDS:
        return None
    return seconds


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (token expiry checks)."""
        ...

    async def sleep(self, seconds: float, wake: asyncio.Event) -> bool:
        """Sleep ``seconds`` or until ``wake`` is set; True when woken early."""
        ...


class RealClock:
    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float, wake: asyncio.Event) -> bool:
        if wake.is_set():
            return True
        return await wait_event(wake, seconds)
