"""What the poll path knows about the fleet, in memory, and the one place it is forgotten.

:class:`FleetCache` owns the four things a poll needs: the fleet generation,
each node's stamp (token ids, state revision, release), the target of each
release, and each node's current plan (with renderings shared by every node
on the same release in the same state). The store caches nothing.

Invalidation is decided here and only here, from two sources:

* :meth:`committed`: a write of this process (a ``Transaction`` that bumped
  the generation or touched nodes), at once;
* :meth:`saw_generation` and :meth:`saw_changes`: the generation watch
  (``generation_watch.py``), which reads the fleet generation and the node
  change feed (``store/node_changes.py``) about once a second on every replica,
  MQTT or not, and so brings in the changes other replicas made.

Staleness bound: on a shared database (replicas), a cached stamp is used only
while it was read, or the watch last read the change feed, at most
``STAMP_TTL_SECONDS`` (1 s) ago: a token rotated or a node state moved on
another replica is honoured here within 1 s, and a stamp nothing changed stays
cached (up to ``STAMP_MAX_AGE_SECONDS``) instead of being read again on every
poll. When the watch cannot read, stamps fall back to the 1 s TTL; after a gap
in its reads longer than the feed's window, every stamp is forgotten. A single
process (SQLite) sees every write it makes, so its stamps live until a write
touches them.
Targets and plans are keyed by what they depend on (generation, release,
state revision), so a key that no longer matches is a miss, never a stale hit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from appliance.planner import FunctionSpec, MigrationSpec, RevertSpec, TargetSpec
from appliance.store.node_changes import FEED_GAP_SECONDS
from appliance.store.records import NodeStamp, Target
from appliance.store.transaction import Transaction

STAMP_TTL_SECONDS = 1.0
# A backstop, not the bound: even a stamp the change feed never named is read
# again now and then (a tenth of the polls at 30 s intervals).
STAMP_MAX_AGE_SECONDS = 300.0
ENTRY_LIMIT = 200_000  # per kind: stamps, plans, renderings (oldest dropped first)

_K = TypeVar("_K")
_V = TypeVar("_V")

# The stamp of a node (None: no such node), and a release's target (None: the fleet-wide one).
StampSource = Callable[[str], Awaitable[NodeStamp | None]]
TargetSource = Callable[[str | None], Awaitable[Target]]


class PlanKey(NamedTuple):
    """Everything a node's plan depends on; any change is a different key.
    (A tuple: built on every poll, and a frozen dataclass costs 3x as much.)"""

    generation: int
    state_seq: int
    release_id: str | None

    @classmethod
    def of(cls, stamp: NodeStamp) -> PlanKey:
        return cls(stamp.generation, stamp.state_seq, stamp.release_id)


@dataclass(frozen=True)
class CachedPlan:
    key: PlanKey
    etag: str
    body: bytes | None  # None: the node held this plan already (no record was opened)
    created: float


@dataclass(frozen=True)
class Rendering:
    """The part of a plan every node on one release in one state shares
    (target and actions, signed URLs included); only sync id and ETag differ."""

    fragment: bytes
    created: float


class FleetCache:
    """The poll path's memory: generation, stamps, targets per release, plans."""

    def __init__(
        self,
        stamps: StampSource,
        targets: TargetSource,
        *,
        shared: bool,
        plan_ttl_seconds: float,
        stamp_ttl_seconds: float = STAMP_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limit: int = ENTRY_LIMIT,
    ) -> None:
        self._load_stamp = stamps
        self._load_target = targets
        # One process alone on its database trusts its own writes: no stamp TTL.
        self._stamp_ttl = stamp_ttl_seconds if shared else float("inf")
        self._stamp_max_age = STAMP_MAX_AGE_SECONDS if shared else float("inf")
        # When the last read of the change feed began (None: not read yet).
        self._feed_read_at: float | None = None
        self._plan_ttl = plan_ttl_seconds
        self._clock = clock
        self._limit = limit
        self.generation: int | None = None
        self._stamps: dict[str, tuple[NodeStamp, float]] = {}
        self._targets: dict[tuple[int, str | None], TargetSpec] = {}
        self._plans: dict[str, CachedPlan] = {}
        self._renderings: dict[tuple[object, ...], Rendering] = {}
        # Moved on by every invalidation: a read begun before one must not fill
        # the cache after it (it would bring back what was just forgotten).
        self._epoch = 0

    # -- invalidation: the one place ------------------------------------------------

    def committed(self, tx: Transaction) -> None:
        """A write of this process ended (committed, or failed and maybe committed)."""
        self._epoch += 1
        if tx.bumped:
            self._forget_fleet()
        for node_id in tx.touched:
            self._stamps.pop(node_id, None)
            self._plans.pop(node_id, None)

    def saw_generation(self, generation: int) -> None:
        """The generation watch read ``generation`` from the database."""
        if generation != self.generation:
            self._epoch += 1
            self._forget_fleet()
            self.generation = generation

    def saw_changes(self, node_ids: set[str], read_started: float) -> None:
        """The watch read the change feed (begun at ``read_started``, this cache's
        clock): forget the stamps of the nodes other replicas changed."""
        previous, self._feed_read_at = self._feed_read_at, read_started
        if previous is None or read_started - previous > FEED_GAP_SECONDS:
            # Rows may have left the feed's window unread: nothing cached is vouched for.
            self._epoch += 1
            self._stamps.clear()
            self._plans.clear()
            return
        if node_ids:
            self._epoch += 1  # a stamp read in flight may predate these changes
        for node_id in node_ids:
            self._stamps.pop(node_id, None)
            self._plans.pop(node_id, None)

    def now(self) -> float:
        """This cache's clock (the watch times its reads with it)."""
        return self._clock()

    def _forget_fleet(self) -> None:
        # Every stamp names the old generation; targets and plans are keyed by it.
        self.generation = None
        self._stamps.clear()
        self._targets.clear()
        self._plans.clear()
        self._renderings.clear()

    # -- stamps ---------------------------------------------------------------------

    def cached_stamp(self, node_id: str) -> NodeStamp | None:
        """The node's stamp if memory holds a fresh one (no I/O: the fast path)."""
        entry = self._stamps.get(node_id)
        if entry is None:
            return None
        now = self._clock()
        age = now - entry[1]
        if age <= self._stamp_ttl:
            return entry[0]
        # Older: good while the change feed vouches for it (read within the bound).
        followed = self._feed_read_at is not None and now - self._feed_read_at <= self._stamp_ttl
        return entry[0] if followed and age <= self._stamp_max_age else None

    async def stamp(self, node_id: str) -> NodeStamp | None:
        cached = self.cached_stamp(node_id)
        if cached is not None:
            return cached
        epoch, read_at = self._epoch, self._clock()
        stamp = await self._load_stamp(node_id)
        if stamp is None or epoch != self._epoch:
            return stamp  # forgotten meanwhile: serve it, keep nothing
        if self.generation is not None and stamp.generation > self.generation:
            self.saw_generation(stamp.generation)  # newer than the watch has seen
        elif self.generation is None:
            self.generation = stamp.generation  # read after the last invalidation
        if stamp.generation == self.generation:
            self._keep(self._stamps, node_id, (stamp, read_at))
        return stamp

    # -- targets, per release -------------------------------------------------------

    async def target(self, generation: int, release_id: str | None) -> TargetSpec:
        key = (generation, release_id)
        spec = self._targets.get(key)
        if spec is not None:
            return spec
        epoch = self._epoch
        target = await self._load_target(release_id)
        spec = TargetSpec(
            tuple(MigrationSpec(m.version, m.description, m.up_sql) for m in target.migrations),
            tuple(
                FunctionSpec(f.id, f.name, f.version, f.sha256, f.size_bytes, f.storage_key)
                for f in target.functions
            ),
            tuple(RevertSpec(m.version, m.down_sql) for m in target.reverts),
        )
        if epoch == self._epoch:
            self._targets[(target.generation, release_id)] = spec
        return spec

    # -- plans ----------------------------------------------------------------------

    def cached_plan(self, stamp: NodeStamp) -> CachedPlan | None:
        cached = self._plans.get(stamp.node_id)
        if (
            cached is None
            or cached.key != PlanKey.of(stamp)
            or self._clock() - cached.created > self._plan_ttl
        ):
            return None
        return cached

    def keep_plan(self, stamp: NodeStamp, etag: str, body: bytes | None, epoch: int) -> CachedPlan:
        """Remember the plan built for ``stamp`` unless an invalidation came meanwhile."""
        plan = CachedPlan(PlanKey.of(stamp), etag, body, self._clock())
        if epoch == self._epoch:
            self._keep(self._plans, stamp.node_id, plan)
        return plan

    def drop_plan(self, node_id: str) -> None:
        self._plans.pop(node_id, None)

    @property
    def epoch(self) -> int:
        return self._epoch

    def rendering(self, key: tuple[object, ...]) -> bytes | None:
        entry = self._renderings.get(key)
        if entry is None or self._clock() - entry.created > self._plan_ttl:
            return None
        return entry.fragment

    def keep_rendering(self, key: tuple[object, ...], fragment: bytes, epoch: int) -> None:
        if epoch == self._epoch:
            self._keep(self._renderings, key, Rendering(fragment, self._clock()))

    def sizes(self) -> dict[str, int]:
        """Entries held, by kind (for /metrics)."""
        return {
            "stamps": len(self._stamps),
            "targets": len(self._targets),
            "plans": len(self._plans),
            "renderings": len(self._renderings),
        }

    def _keep(self, table: dict[_K, _V], key: _K, value: _V) -> None:
        if key not in table and len(table) >= self._limit:
            table.pop(next(iter(table)))
        table[key] = value
