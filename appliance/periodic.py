"""A step run about every ``interval`` seconds as one task, until closed.

For the control plane's per-replica background loops (the generation watch,
the liveness flush): a step that fails is retried at the next tick, logged
loud on the first failures and then now and then, never ending the loop.
``wake()`` runs the next step at once instead of at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from edgesync.waiting import raise_if_cancelling, wait_event


class Periodic:
    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
        log: logging.Logger,
        failing: Callable[[], str],
    ) -> None:
        self._name = name
        self._step = step
        self.interval = interval
        self._log = log
        self._failing = failing  # what a failure leaves undone, for the log line
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, self.interval)
            raise_if_cancelling()
            self._wake.clear()
            try:
                await self._step()
            except Exception as exc:
                self.failures += 1
                loud = self.failures in (1, 5) or self.failures % 60 == 0
                self._log.log(
                    logging.WARNING if loud else logging.DEBUG,
                    "%s (%d failures; retried): %s",
                    self._failing(),
                    self.failures,
                    exc,
                )
