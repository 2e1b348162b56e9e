"""One release, one unit: the agent's ``sync_once`` step.

Order, chosen so that a ``kill -9`` at any instant leaves the node on its old
state or its new one (docs/agent.md):

1. download every new module (content-addressed, verified, atomic);
2. compile them in the runtime (no effect on what is served);
3. ONE libsql transaction: the reverts (``down_sql``, descending), the migrations
   in order and the new function table;
4. after commit: switch the runtime's table, ack, collect unreferenced files.

The plan's target is authoritative, the actions are the means: work is derived
from (local state, target), so a plan computed before a crash-after-commit, or
one that repeats work already done, is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.artifacts import ArtifactCache, Downloader
from agent.edgedb import EdgeDatabase
from agent.failures import PlanInconsistent
from agent.runtime.base import Runtime, collect_compiled
from edgesync.protocol import (
    ApplySchema,
    DeployFunction,
    FunctionRef,
    NodeState,
    Plan,
    RevertSchema,
)

log = logging.getLogger("edgesync.agent")

# Test hook: pause at a named point so a test can SIGKILL the agent exactly there.
PAUSE_ENV = "EDGESYNC_TEST_PAUSE_AT"


def checkpoint(data_dir: Path) -> Callable[[str], None]:
    """A callback that pauses forever at ``$EDGESYNC_TEST_PAUSE_AT`` (tests only)."""
    wanted = set(filter(None, os.environ.get(PAUSE_ENV, "").split(",")))
    if not wanted:
        return lambda point: None

    def reached(point: str) -> None:
        if point in wanted:
            marker = data_dir / f".paused-{point}"
            partial = marker.with_suffix(".tmp")
            partial.write_text(str(os.getpid()))
            os.replace(partial, marker)  # a test never reads it half written
            while True:  # blocks the thread it runs in, on purpose: the test kills us here
                time.sleep(3600)

    return reached


class Reconciler:
    def __init__(
        self,
        data_dir: Path,
        database: EdgeDatabase,
        cache: ArtifactCache,
        runtime: Runtime,
        download: Downloader,
    ) -> None:
        self.data_dir = data_dir
        self.database = database
        self.cache = cache
        self.runtime = runtime
        self._download = download
        self._checkpoint = checkpoint(data_dir)

    async def local_state(self) -> NodeState:
        return await asyncio.to_thread(self.database.state)

    async def start(self) -> NodeState:
        """Serve what the database says the node runs (after a restart or a crash)."""
        state = await self.local_state()
        present = []
        for ref in state.functions:
            path = self.cache.path(ref.sha256)
            if path.exists():
                present.append((ref.sha256, path))
            else:
                log.error("module %s of %s is missing from the cache", ref.sha256, ref.name)
        await asyncio.to_thread(self.runtime.prepare_many, present)
        self.runtime.activate(
            {ref.name: ref for ref in state.functions if self.cache.has(ref.sha256)}
        )
        self.collect(state)
        return state

    async def apply(self, plan: Plan) -> NodeState:
        """Bring the node to ``plan.target``; on failure nothing changed. Returns the new state."""
        local = await self.local_state()
        if local == plan.target and not self.missing_modules(local):
            return local
        reverts, migrations = self._schema_steps(plan, local)
        await self._fetch_modules(plan, local)
        await self._in_thread_checkpoint("downloaded")
        state = await asyncio.to_thread(
            self.database.apply_release,
            migrations,
            plan.target.functions,
            plan.sync_id,
            self._checkpoint,
            reverts,
        )
        await self._in_thread_checkpoint("committed")
        self.runtime.activate({ref.name: ref for ref in state.functions})
        await self._in_thread_checkpoint("activated")
        return state

    def missing_modules(self, state: NodeState) -> list[FunctionRef]:
        """Functions the state names whose verified module is not in the cache."""
        return [ref for ref in state.functions if not self.cache.has(ref.sha256)]

    def collect(self, state: NodeState, *, also_keep: Iterable[FunctionRef] = ()) -> None:
        """Remove every file no state refers to: modules, compiled outputs, temporaries.

        Derived from ``state`` (plus ``also_keep``: a target about to be tried again),
        never from what this run deleted, so whatever an interrupted run left behind
        goes too. Called at start-up and after every release.
        """
        keep = {ref.sha256 for ref in (*state.functions, *also_keep)}
        try:
            for sha256 in self.cache.collect(keep):
                self.runtime.forget(sha256)
            collect_compiled(self.data_dir, keep)
        except OSError as exc:  # the node runs on; the next collection tries again
            log.warning("cannot remove unused files: %s", exc)

    async def _in_thread_checkpoint(self, point: str) -> None:
        await asyncio.to_thread(self._checkpoint, point)

    @staticmethod
    def _schema_steps(plan: Plan, local: NodeState) -> tuple[list[RevertSchema], list[ApplySchema]]:
        """The reverts (descending) and migrations (ascending) from ``local`` to the target.

        The node goes down to a base version, then up to the target: the base is the
        lowest of its own version, the target and what the plan's reverts reach (a plan
        may revert a migration and apply another in its place).
        """
        wanted, have = plan.target.schema_version, local.schema_version
        reverts = {a.version: a for a in plan.actions if isinstance(a, RevertSchema)}
        base = min(have, wanted, min(reverts, default=have + 1) - 1)
        missing_reverts = [v for v in range(have, base, -1) if v not in reverts]
        if missing_reverts:
            raise PlanInconsistent(
                f"plan lacks the reverts that take the node from schema {have} down to {base}",
                details={"target": wanted, "local": have, "missing_reverts": missing_reverts},
            )
        available = {a.version: a for a in plan.actions if isinstance(a, ApplySchema)}
        missing = [v for v in range(base + 1, wanted + 1) if v not in available]
        if missing:
            raise PlanInconsistent(
                "plan lacks migrations the node needs", details={"missing": missing}
            )
        return (
            [reverts[v] for v in range(have, base, -1)],
            [available[v] for v in range(base + 1, wanted + 1)],
        )

    async def _fetch_modules(self, plan: Plan, local: NodeState) -> None:
        deploys = {(a.name, a.sha256): a for a in plan.actions if isinstance(a, DeployFunction)}
        fetched = []
        for ref in plan.target.functions:
            if self.cache.has(ref.sha256) and ref in local.functions:
                continue
            path = self.cache.path(ref.sha256)
            if not path.exists():
                action = deploys.get((ref.name, ref.sha256))
                if action is None:
                    raise PlanInconsistent(
                        f"plan targets {ref.name} {ref.version} without a download",
                        details={"name": ref.name, "version": ref.version},
                    )
                path = await self.cache.fetch(ref.sha256, action.download_url, self._download)
            fetched.append((ref.sha256, path))
        # Every module is downloaded and verified first, then compiled together:
        # the runtimes compile a plan's modules in parallel, up to the core count.
        await asyncio.to_thread(self.runtime.prepare_many, fetched)
