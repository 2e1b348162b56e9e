"""Time for the agent: the retry schedule, poll jitter, and an injectable clock.

The loop never calls ``asyncio.sleep`` or ``time`` directly: tests drive it
with a fake clock and check the schedule without waiting for wall time.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol

RETRY_CAP_SECONDS = 60.0


def retry_delay(failures: int) -> float:
    """Delay before the next try after ``failures`` consecutive failures.

    0, 1, 2, 4, 8, 16, 32, then 60 s forever (the documented schedule).
    """
    if failures <= 1:
        return 0.0
    return min(RETRY_CAP_SECONDS, float(2 ** (failures - 2)))


def jittered(interval: float, rng: random.Random | None = None) -> float:
    """``interval`` ± 10 %, so a fleet restarted together does not poll in lockstep."""
    return interval * (rng or random).uniform(0.9, 1.1)


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
        try:
            await asyncio.wait_for(wake.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True
