"""The node change feed on PostgreSQL: rows written in the writer's transaction,
read once each by every replica's reader, late commits included, old rows pruned."""

from __future__ import annotations

import pytest

from appliance.store.node_changes import FEED_KEPT_SECONDS, FEED_WINDOW_SECONDS
from appliance.store.store import Store
from appliance.store.transaction import Transaction

pytestmark = pytest.mark.databases("postgresql")


async def change(store: Store, node_id: str, seconds_ago: float = 0.0) -> None:
    """A feed row for ``node_id`` whose database time lies ``seconds_ago`` back
    (a transaction that took that long between its insert and its commit)."""

    async def body(tx: Transaction) -> None:
        tx.touch(node_id)

    await store._write(body)
    if seconds_ago:
        await store.db.execute(
            "UPDATE node_changes SET changed_at = changed_at - ? WHERE node_id = ?",
            (seconds_ago, node_id),
        )


async def test_each_change_is_handed_on_once_by_each_reader(store: Store) -> None:
    first, second = store.node_change_feed(), store.node_change_feed()
    assert await first.read() == set()
    await change(store, "n1")
    await change(store, "n2")
    assert await first.read() == {"n1", "n2"}
    assert await first.read() == set()  # still in the window: not handed on again
    assert await second.read() == {"n1", "n2"}  # every replica reads for itself


async def test_a_row_committed_after_a_later_one_was_read_is_still_handed_on(
    store: Store,
) -> None:
    feed = store.node_change_feed()
    await change(store, "later")
    assert await feed.read() == {"later"}
    # Stamped before "later" by the database clock, but committed only now.
    await change(store, "earlier", seconds_ago=FEED_WINDOW_SECONDS / 2)
    assert await feed.read() == {"earlier"}


async def test_old_rows_are_pruned_and_recent_ones_kept(store: Store) -> None:
    await change(store, "old", seconds_ago=FEED_KEPT_SECONDS + 1)
    await change(store, "recent")
    assert await store.prune_node_changes() == 1
    rows = await store.db.fetchall("SELECT node_id FROM node_changes")
    assert [row["node_id"] for row in rows] == ["recent"]


@pytest.mark.databases("sqlite")
async def test_one_process_records_no_feed(store: Store) -> None:
    await change(store, "n1")  # its own commit listeners are enough
    assert await store.db.fetchall("SELECT node_id FROM node_changes") == []
