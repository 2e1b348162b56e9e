"""The embedded store's reads see every write committed before they started.

All reads share one SQLite connection. A read used to run as separate calls on
aiosqlite's thread (execute, fetch, close); a read of another coroutine that
got in between ran inside the first one's still-open read snapshot and missed
a write committed just before it: a node registered a moment earlier was
"gone" for its first poll (found by bench/plan_fanout.py, about 2 in 1,000).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.store.sqlite import SqliteDatabase


async def test_a_read_sees_the_write_committed_before_it(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(str(tmp_path / "reads.db"))
    try:
        await db.execute("CREATE TABLE wide (id INTEGER PRIMARY KEY)")
        await db.execute("CREATE TABLE marks (v INTEGER PRIMARY KEY)")
        async with db.transaction() as tx:
            for index in range(2000):
                await tx.execute("INSERT INTO wide (id) VALUES (?)", (index,))

        async def long_read() -> None:  # many rows: a snapshot open while it runs
            await db.fetchone("SELECT id FROM wide ORDER BY id")

        async def write_then_read(value: int) -> bool:
            await db.execute("INSERT INTO marks (v) VALUES (?)", (value,))
            return await db.fetchone("SELECT v FROM marks WHERE v = ?", (value,)) is not None

        missed = 0
        for value in range(300):
            reads = [long_read() for _ in range(3)]
            *_, seen = await asyncio.gather(*reads, write_then_read(value))
            missed += not seen
        assert missed == 0
    finally:
        await db.close()
