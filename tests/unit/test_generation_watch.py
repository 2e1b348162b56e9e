"""The fleet watch: the generation and the node change feed, read each step."""

from __future__ import annotations

import pytest

from appliance.generation_watch import PRUNE_EVERY_STEPS, ChangeFeed, GenerationWatch


class Feed:
    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.seen: list[tuple[set[str], float]] = []
        self.prunes = 0
        self.broken = False

    async def read(self) -> set[str]:
        if self.broken:
            raise ConnectionError("database unavailable")
        pending, self.pending = self.pending, set()
        return pending

    def saw(self, node_ids: set[str], started: float) -> None:
        self.seen.append((node_ids, started))

    async def prune(self) -> None:
        self.prunes += 1


def make(feed: Feed, generation: list[int], now: list[float]) -> GenerationWatch:
    async def read() -> int:
        return generation[0]

    hooks = ChangeFeed(feed.read, feed.saw, feed.prune)
    return GenerationWatch(read, lambda _: None, feed=hooks, clock=lambda: now[0])


async def test_each_step_hands_on_the_changed_nodes_with_the_time_the_read_began() -> None:
    feed, generation, now = Feed(), [1], [10.0]
    watch = make(feed, generation, now)
    feed.pending = {"n1"}
    await watch.step()
    now[0] = 11.0
    await watch.step()
    assert feed.seen == [({"n1"}, 10.0), (set(), 11.0)]


async def test_old_feed_rows_are_pruned_every_so_many_steps() -> None:
    feed = Feed()
    watch = make(feed, [1], [0.0])
    for _ in range(PRUNE_EVERY_STEPS * 2):
        await watch.step()
    assert feed.prunes == 2


async def test_a_feed_that_cannot_be_read_does_not_hold_back_a_new_generation() -> None:
    feed, generation = Feed(), [1]
    watch = make(feed, generation, [0.0])
    heard: list[int] = []
    watch.listeners.append(heard.append)
    feed.broken = True
    generation[0] = 2
    with pytest.raises(ConnectionError):
        await watch.step()  # the loop logs it and tries again next tick
    assert heard == [2] and feed.seen == []  # stamps were not vouched for
