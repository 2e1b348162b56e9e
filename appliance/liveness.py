"""Liveness written in batches: nodes seen alive, coalesced in memory per replica.

Every poll (and every heartbeat) says "this node is alive". Writing that per
request made liveness the fleet's hottest write, through an index on an
ever-increasing timestamp. Here a replica keeps the newest mark per node in a
dict and one task writes them all about once a second, in a few statements
(``NodeStore.record_liveness``). A crash loses at most that second of
liveness, never an ack: acks are written in their own request's transaction.

The status rules still hold across replicas: ``offline_after`` is computed
from the moment the node was seen (3 poll intervals on), whichever replica saw
it; a replica flushing late moves it back by at most its flush interval. Readers
that must see this replica's newest marks (the node list and node pages)
call :meth:`flush` first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from appliance.periodic import Periodic
from appliance.store.records import OFFLINE_AFTER_INTERVALS, LivenessMark
from edgesync.protocol import format_time

log = logging.getLogger("edgesync.liveness")

FLUSH_INTERVAL_SECONDS = 1.0

Writer = Callable[[list[LivenessMark]], Awaitable[int]]
_Mark = tuple[float, int, str | None, str | None]


def moment_of(seen_at: float) -> datetime:
    """The recorded moment of a ``time.time()`` (what the database will hold)."""
    return datetime.fromtimestamp(seen_at, UTC)


def _row(node_id: str, mark: _Mark) -> LivenessMark:
    seen_at, poll_interval, agent_version, state_etag = mark
    moment = moment_of(seen_at)
    offline = moment + timedelta(seconds=OFFLINE_AFTER_INTERVALS * poll_interval)
    return LivenessMark(
        node_id, format_time(moment), format_time(offline), agent_version, state_etag
    )


class LivenessBuffer:
    """Marks per node, newest wins, flushed by :meth:`run` or on demand."""

    def __init__(
        self,
        write: Writer,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._write = write
        self._now = now
        # node id -> (seen at, poll interval, agent version, state etag); made into
        # rows only when flushed, so that a poll pays a clock read and a dict store.
        self._marks: dict[str, _Mark] = {}
        self._lock = asyncio.Lock()  # one flush at a time: marks are written in order
        self._loop = Periodic(
            "edgesync-liveness-flush",
            self.flush,
            interval,
            log,
            lambda: f"liveness of {self.pending} nodes not written yet",
        )
        self.flushed_rows = 0

    def seen(
        self,
        node_id: str,
        poll_interval_seconds: int,
        agent_version: str | None = None,
        state_etag: str | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Node ``node_id`` is alive now, or ``at`` (a ``time.time()`` the caller
        told the node); no I/O: this is on the poll path."""
        earlier = self._marks.get(node_id)
        if earlier is not None:  # a fact a newer mark does not repeat is kept
            agent_version = agent_version or earlier[2]
            state_etag = state_etag or earlier[3]
        moment = self._now() if at is None else at
        self._marks[node_id] = (moment, poll_interval_seconds, agent_version, state_etag)

    @property
    def pending(self) -> int:
        return len(self._marks)

    async def flush(self) -> None:
        """Write every pending mark now. A failed write puts its marks back (unless
        newer ones came meanwhile) and raises."""
        async with self._lock:
            if not self._marks:
                return
            batch, self._marks = self._marks, {}
            try:
                self.flushed_rows += await self._write(
                    [_row(node_id, mark) for node_id, mark in batch.items()]
                )
            except BaseException:
                for node_id, mark in batch.items():
                    self._marks.setdefault(node_id, mark)
                raise

    # -- the flushing task ----------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        """Stop the task and write what is pending (the app is shutting down)."""
        await self._loop.close()
        try:
            await self.flush()
        except Exception as exc:  # the database is gone: that second of liveness is lost
            log.warning("liveness of %d nodes not written at shutdown: %s", self.pending, exc)
