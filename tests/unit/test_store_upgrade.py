"""Migration 6 on a database that already has nodes: their token ids are remembered,
so no rotation after the upgrade can bring back a token they held before it."""

from __future__ import annotations

import pytest
from test_store import add_node, enrollment

from appliance.store import migrate
from appliance.store.db import open_database
from appliance.store.records import NodeRecord
from appliance.store.schema import MIGRATIONS
from appliance.store.store import Store


async def test_upgrading_remembers_the_tokens_nodes_hold(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = await open_database(database_url)
    try:
        store = Store(database)
        monkeypatch.setattr(migrate, "MIGRATIONS", MIGRATIONS[:5])
        assert await store.migrate() == 5
        token_id = await enrollment(store)
        node = await _node_before_upgrade(store, token_id, monkeypatch)
        # Version 5 kept the rotated-away token id beside the current one.
        await database.execute(
            "UPDATE nodes SET previous_token_jti = ? WHERE id = ?", ("0" * 32, node.id)
        )
        monkeypatch.setattr(migrate, "MIGRATIONS", MIGRATIONS)
        assert await store.migrate() == MIGRATIONS[-1].version
        for held in (node.token_jti, "0" * 32):
            assert not await store.rotate_token(node.id, node.token_jti, held, "h", "x")
        assert await store.rotate_token(node.id, node.token_jti, "1" * 32, "h", "x")
    finally:
        await database.close()


async def _node_before_upgrade(
    store: Store, token_id: str, monkeypatch: pytest.MonkeyPatch
) -> NodeRecord:
    """A node registered by version 5 (which had no token history to write to)."""

    async def nothing_to_remember(*args: object) -> None:
        return None

    with monkeypatch.context() as patch:
        patch.setattr(store, "_remember_jti", nothing_to_remember)
        return await add_node(store, token_id)
