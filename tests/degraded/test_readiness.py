"""``/readyz`` says "not ready" at once while the database is down, whatever the
pool's own timeouts: an orchestrator's probe must not hang on a restarting database."""

from __future__ import annotations

import asyncio

from degraded_support import AppFactory, PgDatabase, readiness, wait_ready, within

# Far longer than /readyz may take, far shorter than the pool's timeout below: a
# probe that waits for the pool misses it.
PROBE_BOUND = 10.0


async def test_readyz_is_503_without_waiting_for_the_pool(
    make_replica: AppFactory, pg: PgDatabase
) -> None:
    api = await make_replica(database_url=pg.url(pool_timeout="60", pool_reconnect_timeout="60"))
    assert (await readiness(api))[0] == 200
    await asyncio.to_thread(pg.server.stop, "fast")
    for _ in range(3):  # the first probe meets a dead connection, the next ones an empty pool
        status, checks = await within(readiness(api), PROBE_BOUND)
        assert status == 503
        assert checks["database"].startswith("unavailable"), checks
        assert checks["artifacts"] == "ok"
    await asyncio.to_thread(pg.server.start)
    assert (await wait_ready(api))["database"] == "ok"
