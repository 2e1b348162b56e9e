"""Waiting for an event with a timeout, cancellable at every instant.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as
its timeout fires (fixed in 3.12): a loop of ``wait_for(event.wait(), t)`` then
never ends, and whatever closes it waits forever (seen as a hung shutdown of the
control plane's background loops). ``asyncio.timeout`` does not have that flaw.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True when ``event`` is set within ``seconds``, False when the time ran out."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        return False
    return True


def raise_if_cancelling() -> None:
    """Re-raise a cancellation of the current task that a library swallowed.

    A background loop that retries failed steps (``except Exception``) never
    ends if a step's library turns a cancellation into another error (psycopg's
    pool waits with 3.11's ``wait_for``): call this at the top of each turn.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
