"""The sliding-window limit behind the full-plan rate limit (an injected clock)."""

from __future__ import annotations

import pytest

from appliance.rate_limit import SlidingWindowLimit
from edgesync.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_per_key_and_its_retry_after() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(3, 60.0, clock=clock)
    for _ in range(3):
        limit.check("a", "things")
        clock.now += 1
    with pytest.raises(RateLimited) as refused:
        limit.check("a", "things")
    assert refused.value.status == 429 and refused.value.retryable
    assert refused.value.headers["Retry-After"] == "57"  # the oldest leaves at 1060
    limit.check("b", "things")  # another key has its own window
    clock.now = 1060.0
    limit.check("a", "things")  # the oldest event left the window


def test_idle_keys_are_forgotten_when_the_table_is_full() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(1, 10.0, max_keys=2, clock=clock)
    limit.check("a", "x")
    limit.check("b", "x")
    clock.now += 11
    limit.check("c", "x")
    assert set(limit._events) == {"c"}
