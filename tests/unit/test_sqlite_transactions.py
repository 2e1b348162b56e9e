"""A write transaction interrupted at any await leaves the embedded store usable.

A cancelled ``BEGIN IMMEDIATE`` (a request or the rollout engine cancelled at
shutdown) still runs on aiosqlite's thread after its task is gone: the writer
connection stayed inside a transaction nobody would end, and every later write
failed with "cannot start a transaction within a transaction" (the rollout
engine then logged that error in a loop until the test timed out).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.store.sqlite import SqliteDatabase


async def _write(db: SqliteDatabase, value: int) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO marks (v) VALUES (?)", (value,))


async def test_writes_go_on_after_transactions_cancelled_at_every_step(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(str(tmp_path / "tx.db"))
    try:
        await db.execute("CREATE TABLE marks (v INTEGER PRIMARY KEY)")
        # Cancel after 0, 1, 2 … loop turns: the cancellation lands in BEGIN, in
        # the body, in COMMIT, or after the transaction, whatever the timing.
        for turns in range(12):
            task = asyncio.create_task(_write(db, 1000 + turns))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await _write(db, turns)  # must not raise
        rows = await db.fetchall("SELECT v FROM marks WHERE v < 1000 ORDER BY v")
        assert [row["v"] for row in rows] == list(range(12))
    finally:
        await db.close()
