"""A loop waiting on an event with a timeout always ends when cancelled.

With Python 3.11's ``asyncio.wait_for``, a cancellation arriving in the same
loop turn as the event being set is swallowed: the loop goes on, and whatever
closes it waits forever (the control plane's shutdown hung in the degraded
suite about once in ten runs, when a wake-up and the cancel coincided).
"""

from __future__ import annotations

import asyncio

from edgesync.waiting import wait_event


async def _woken_loop(event: asyncio.Event) -> None:
    while True:
        await wait_event(event, 10)
        event.clear()


async def test_a_cancel_in_the_same_turn_as_a_wake_up_ends_the_loop() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_woken_loop(event))
    await asyncio.sleep(0.01)  # the loop is waiting
    event.set()
    task.cancel()
    async with asyncio.timeout(5):  # with wait_for, this waited forever
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_it_tells_a_set_event_from_a_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_periodic_loop_ends_when_its_step_swallows_the_cancel() -> None:
    import logging

    from appliance.periodic import Periodic

    started = asyncio.Event()

    async def step() -> None:  # as psycopg's pool did: cancel in, another error out
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("couldn't get a connection") from None

    loop = Periodic("test", step, 0.01, logging.getLogger("test"), lambda: "test step")
    loop.start()
    await started.wait()
    async with asyncio.timeout(5):  # it looped forever before
        await loop.close()
