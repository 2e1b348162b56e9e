"""The store's writes tell their commit listeners what they changed, explicitly.

Each write body runs on a ``Transaction`` that records the generation bumps
(with their reasons) and the nodes whose stamp moved; the store hands it to its
commit listeners (the FleetCache) after the transaction, committed or not.
"""

from __future__ import annotations

import pytest
from test_store import add_node, enrollment, migration, open_plan, success

from appliance.store.store import Store
from appliance.store.transaction import Transaction
from edgesync.errors import SchemaVersionConflict
from edgesync.protocol import utcnow


async def test_listeners_hear_bumps_and_touched_nodes(store: Store) -> None:
    heard: list[Transaction] = []
    store.add_commit_listener(heard.append)
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    assert heard == []  # a registration changes nothing a cache holds
    await store.add_migration(migration(1))
    (bump,) = heard
    assert bump.committed and bump.touched == set() and bump.bumped[-1] == "schema_added"
    sync = await open_plan(store, node.id)
    await store.record_ack(node.id, success(sync.id), utcnow())
    assert heard[-1].touched == {node.id} and heard[-1].bumped == []
    assert await store.rotate_token(node.id, node.token_jti, "f" * 32, "h", "x")
    assert heard[-1].touched == {node.id}
    store.remove_commit_listener(heard.append)
    await store.add_migration(migration(2))
    assert len(heard) == 3


async def test_a_failed_write_is_told_as_not_committed(store: Store) -> None:
    """A write that fails after bumping may have committed (an ambiguous commit):
    its listeners hear it, marked not committed, and forget what it marked."""
    heard: list[Transaction] = []
    store.add_commit_listener(heard.append)
    before = await store.generation()

    async def bump_then_fail(tx: Transaction) -> None:
        await store._bump_generation(tx, "test")
        raise SchemaVersionConflict("refused after the bump")

    with pytest.raises(SchemaVersionConflict):
        await store._write(bump_then_fail)
    (failed,) = heard
    assert failed.bumped == ["test"] and not failed.committed
    assert await store.generation() == before  # rolled back
