"""The FleetCache: what it keeps, for how long, and the one place that forgets it."""

from __future__ import annotations

from collections.abc import Callable

from appliance.fleet_cache import STAMP_TTL_SECONDS, FleetCache
from appliance.store.node_changes import FEED_GAP_SECONDS
from appliance.store.records import FunctionRecord, NodeStamp, Target
from appliance.store.transaction import Transaction


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Stamps and targets as the store would answer, counting the reads."""

    def __init__(self) -> None:
        self.generation = 1
        self.state_seq = 0
        self.jti = "a"
        self.stamp_reads = 0
        self.target_reads: list[str | None] = []
        self.during_read: Callable[[], None] | None = None

    async def stamp(self, node_id: str) -> NodeStamp | None:
        self.stamp_reads += 1
        if self.during_read is not None:
            self.during_read()
        return NodeStamp(node_id, self.jti, self.state_seq, self.generation)

    async def target(self, release_id: str | None) -> Target:
        self.target_reads.append(release_id)
        name = release_id or "fleet"
        function = FunctionRecord(
            id=name,
            name=name,
            version="1",
            sha256="0" * 64,
            size_bytes=1,
            storage_key=name,
            created_at="2026-01-01T00:00:00.000000Z",
        )
        return Target(self.generation, [], [function])


def make(source: Source, clock: Clock, *, shared: bool) -> FleetCache:
    return FleetCache(source.stamp, source.target, shared=shared, plan_ttl_seconds=300, clock=clock)


def tx(*, bumped: bool = False, touched: tuple[str, ...] = ()) -> Transaction:
    change = Transaction(connection=None)  # type: ignore[arg-type]
    if bumped:
        change.bump("test")
    for node_id in touched:
        change.touch(node_id)
    return change


async def test_a_shared_database_rereads_a_stamp_after_its_ttl() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=True)
    assert (await cache.stamp("n")).token_jti == "a"  # type: ignore[union-attr]
    source.jti = "b"  # rotated on another replica
    clock.now += STAMP_TTL_SECONDS / 2
    assert (await cache.stamp("n")).token_jti == "a"  # type: ignore[union-attr]
    assert cache.cached_stamp("n") is not None
    clock.now += STAMP_TTL_SECONDS
    assert cache.cached_stamp("n") is None  # the fast path no longer trusts it
    assert (await cache.stamp("n")).token_jti == "b"  # type: ignore[union-attr]
    assert source.stamp_reads == 2


async def test_one_process_keeps_stamps_until_its_own_write_touches_them() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=False)
    await cache.stamp("n")
    clock.now += 3600
    await cache.stamp("n")
    assert source.stamp_reads == 1
    cache.committed(tx(touched=("other",)))
    await cache.stamp("n")
    assert source.stamp_reads == 1
    source.state_seq = 1
    cache.committed(tx(touched=("n",)))
    assert (await cache.stamp("n")).state_seq == 1  # type: ignore[union-attr]
    assert source.stamp_reads == 2


async def test_a_generation_bump_forgets_stamps_targets_and_plans() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=False)
    stamp = await cache.stamp("n")
    assert stamp is not None
    await cache.target(stamp.generation, None)
    cache.keep_plan(stamp, '"e"', None, cache.epoch)
    assert cache.cached_plan(stamp) is not None
    source.generation = 2
    cache.committed(tx(bumped=True))
    assert cache.sizes() == {"stamps": 0, "targets": 0, "plans": 0, "renderings": 0}
    assert (await cache.stamp("n")).generation == 2  # type: ignore[union-attr]


async def test_the_watch_seeing_a_new_generation_forgets_and_the_same_one_does_not() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=True)
    cache.saw_generation(1)
    await cache.stamp("n")
    cache.saw_generation(1)
    assert cache.cached_stamp("n") is not None
    cache.saw_generation(2)  # another replica bumped it
    assert cache.cached_stamp("n") is None


async def test_a_read_overtaken_by_an_invalidation_is_not_kept() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=False)
    source.during_read = lambda: cache.committed(tx(touched=("n",)))
    await cache.stamp("n")
    assert cache.cached_stamp("n") is None  # it may predate the write: not cached
    source.during_read = None
    await cache.stamp("n")
    assert cache.cached_stamp("n") is not None


async def test_targets_are_cached_per_release() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=False)
    fleet = await cache.target(1, None)
    r1 = await cache.target(1, "r1")
    assert await cache.target(1, "r1") is r1 and await cache.target(1, None) is fleet
    assert [f.name for f in r1.functions] == ["r1"] and [f.name for f in fleet.functions] == [
        "fleet"
    ]
    assert source.target_reads == [None, "r1"]


async def test_a_plan_is_found_only_under_its_exact_key() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=False)
    stamp = await cache.stamp("n")
    assert stamp is not None
    cache.keep_plan(stamp, '"e"', b"{}", cache.epoch)
    moved = NodeStamp("n", "a", 1, stamp.generation)
    other_release = NodeStamp("n", "a", 0, stamp.generation, release_id="r2")
    assert cache.cached_plan(moved) is None and cache.cached_plan(other_release) is None
    assert cache.cached_plan(stamp) is not None
    clock.now += 301  # past the plan TTL (its signed URLs would be getting old)
    assert cache.cached_plan(stamp) is None


async def test_the_change_feed_keeps_stamps_past_their_ttl_and_forgets_the_named_ones() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=True)
    cache.saw_changes(set(), clock.now)
    await cache.stamp("n1")
    await cache.stamp("n2")
    for _ in range(3):  # the watch reads the feed each interval; nothing changed
        clock.now += STAMP_TTL_SECONDS * 2
        cache.saw_changes(set(), clock.now)
        assert cache.cached_stamp("n1") is not None
    assert source.stamp_reads == 2
    cache.saw_changes({"n2"}, clock.now)  # another replica changed n2
    assert cache.cached_stamp("n1") is not None and cache.cached_stamp("n2") is None
    clock.now += STAMP_TTL_SECONDS * 2  # the watch stopped reading: the TTL rules again
    assert cache.cached_stamp("n1") is None


async def test_a_gap_in_the_feed_reads_forgets_every_stamp() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=True)
    cache.saw_changes(set(), clock.now)
    await cache.stamp("n1")
    clock.now += FEED_GAP_SECONDS + 1  # rows may have left the window unread meanwhile
    cache.saw_changes(set(), clock.now)
    assert cache.cached_stamp("n1") is None


async def test_a_stamp_read_while_the_feed_names_its_node_is_not_kept() -> None:
    source, clock = Source(), Clock()
    cache = make(source, clock, shared=True)
    cache.saw_changes(set(), clock.now)
    source.during_read = lambda: cache.saw_changes({"n1"}, clock.now)
    await cache.stamp("n1")
    assert cache.cached_stamp("n1") is None
