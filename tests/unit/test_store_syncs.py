"""Sync records move once, from pending; only the node's newest plan moves its state.

Runs on every database kind (the ``store`` fixture), SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from test_store import SHA_A, SHA_B, add_node, enrollment, open_plan, success

from appliance.store.store import Store
from appliance.store.syncs import (
    APPLIED,
    ERROR_CODE_LIMIT,
    ERROR_MESSAGE_LIMIT,
    IGNORED,
    REPEATED,
)
from edgesync.protocol import Ack, ErrorInfo, FunctionRef, NodeState, utcnow

V1 = FunctionRef("hello", "1.0", SHA_A)
V2 = FunctionRef("hello", "2.0", SHA_B)


def failed(
    sync_id: str, *refs: FunctionRef, code: str = "MIGRATION_FAILED", message: str = "x"
) -> Ack:
    return Ack(sync_id, "failed", NodeState(0, refs), ErrorInfo(code, message, {}, False))


async def test_a_different_ack_for_a_finished_sync_is_ignored(store: Store) -> None:
    node = await add_node(store, await enrollment(store))
    sync = await open_plan(store, node.id)
    done = await store.record_ack(node.id, success(sync.id, V2, schema=1), utcnow())
    assert done.outcome == APPLIED
    late = await store.record_ack(node.id, failed(sync.id, V1), utcnow())
    assert late.outcome == IGNORED and not late.recorded
    assert late.record.status == "success" and late.record.ignored_acks == 1
    saved = await store.get_node(node.id)
    assert saved.state() == NodeState(1, (V2,))
    assert saved.state_seq == 1
    # The first ack again is still the idempotent repeat it always was.
    assert (await store.record_ack(node.id, success(sync.id, V2, schema=1), utcnow())).recorded


async def test_a_late_ack_for_a_superseded_sync_changes_nothing(store: Store) -> None:
    node = await add_node(store, await enrollment(store))
    older = await open_plan(store, node.id)
    newer = await open_plan(store, node.id)  # supersedes the older plan
    assert (await store.record_ack(node.id, success(newer.id, V2), utcnow())).outcome == APPLIED
    late = await store.record_ack(node.id, success(older.id, V1), utcnow())
    assert late.outcome == IGNORED
    assert late.record.status == "failed" and late.record.error_code == "SUPERSEDED"
    assert (await store.get_node(node.id)).state() == NodeState(0, (V2,))


async def test_an_ack_for_a_superseded_sync_before_the_newer_one_is_ignored_too(
    store: Store,
) -> None:
    node = await add_node(store, await enrollment(store))
    older = await open_plan(store, node.id)
    newer = await open_plan(store, node.id)
    assert (await store.record_ack(node.id, success(older.id, V1), utcnow())).outcome == IGNORED
    assert (await store.get_node(node.id)).state_seq == 0
    assert (await store.record_ack(node.id, success(newer.id, V2), utcnow())).outcome == APPLIED


async def test_concurrent_conflicting_acks_make_exactly_one_transition(store: Store) -> None:
    node = await add_node(store, await enrollment(store))
    sync = await open_plan(store, node.id)
    acks = [
        success(sync.id, FunctionRef("hello", f"{index}.0", SHA_A), schema=index)
        if index % 2
        else failed(sync.id, message=f"attempt {index}")
        for index in range(20)
    ]
    results = await asyncio.gather(*(store.record_ack(node.id, ack, utcnow()) for ack in acks))
    outcomes = [result.outcome for result in results]
    assert outcomes.count(APPLIED) == 1 and outcomes.count(IGNORED) == 19
    winner = acks[outcomes.index(APPLIED)]
    saved = await store.get_node(node.id)
    assert saved.state_seq == 1
    assert saved.state() == winner.state
    record = await store.get_sync(sync.id)
    assert record is not None and record.status == winner.status and record.ignored_acks == 19


async def test_asking_again_for_the_same_plan_reuses_its_open_record(store: Store) -> None:
    node = await add_node(store, await enrollment(store))
    first = await open_plan(store, node.id)
    again = replace(first, id=str(uuid.uuid4()))
    assert await store.open_sync(again) == first.id
    assert [r.id for r in await store.sync_history(node.id, 10)] == [first.id]
    other_kind = replace(first, id=str(uuid.uuid4()), sync_type="incremental")
    assert await store.open_sync(other_kind) == other_kind.id
    assert len(await store.sync_history(node.id, 10)) == 2


async def test_stored_error_fields_are_cut_to_their_limits(store: Store) -> None:
    node = await add_node(store, await enrollment(store))
    sync = await open_plan(store, node.id)
    ack = failed(sync.id, code="X" * 10_000, message="m" * 100_000)
    record = (await store.record_ack(node.id, ack, utcnow())).record
    assert record.error_code is not None and len(record.error_code) == ERROR_CODE_LIMIT
    assert record.error_message is not None and len(record.error_message) == ERROR_MESSAGE_LIMIT
    assert (await store.record_ack(node.id, ack, utcnow())).outcome == REPEATED
