"""When the store runs a statement again, and how long it waits first.

CockroachDB (and PostgreSQL at SERIALIZABLE) abort work that lost a conflict
with SQLSTATE 40001: a write transaction is re-run by the store's write loop,
and so is a plain read (CockroachDB retries a read itself only while its result
still fits its 16 KiB buffer; past that the client sees 40001). Two other
outcomes are *ambiguous*: 40003 ("statement completion unknown") and XXA00 (a
DDL transaction partially committed). The work may or may not have happened, so
only a statement that is idempotent by construction may be run again: the
migration runner does, for its ``IF NOT EXISTS`` statements; every other write
surfaces it as :class:`~appliance.store.db.AmbiguousResult` (a 503 the client
retries, against requests made idempotent by their keys).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from appliance.store.db import AmbiguousResult, SerializationFailure

T = TypeVar("T")

# Reads lost to a conflict: the read runs again at once, then with backoff.
READ_ATTEMPTS = 5
# Idempotent statements (migrations) whose outcome was ambiguous or lost.
IDEMPOTENT_ATTEMPTS = 5


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, jittered, capped."""
    if attempt == 0:
        return 0.0
    return min(0.5, 0.005 * 2**attempt) * random.uniform(0.5, 1.5)


async def retry_idempotent(run: Callable[[], Awaitable[T]]) -> T:
    """Run an idempotent statement, again when it was lost or its outcome is unknown.

    Only for statements whose second run changes nothing the first one did
    (``CREATE … IF NOT EXISTS``, ``INSERT … ON CONFLICT DO NOTHING``).
    """
    for attempt in range(IDEMPOTENT_ATTEMPTS - 1):
        try:
            return await run()
        except (SerializationFailure, AmbiguousResult):
            await asyncio.sleep(backoff(attempt + 1))
    return await run()
