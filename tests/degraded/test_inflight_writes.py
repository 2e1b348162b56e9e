"""Writes in flight when the database dies (``pg_ctl stop -m immediate``: a crash)
are applied whole or not at all.

To catch a transaction mid-way for certain, the test holds a row lock the write
needs for its *last* statements, waits until the write is blocked on it (its
earlier statements done, uncommitted), and only then kills the server. Then,
racing without locks, many acks meet a crash at whatever point they reached.
Afterwards every record agrees with itself: a sync record, the node's state
and its deployments move together; a schema, the fleet generation and its
change record move together; an upload is listed only with its object.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from degraded_support import (
    ADMIN,
    Api,
    AppFactory,
    Node,
    PgDatabase,
    expect_error,
    expect_unavailable,
    wait_ready,
    within,
)
from s3.support import S3Server

from edgesync.protocol import format_time, utcnow

# Long enough that the blocked write is still waiting when the server dies.
LOCK_WAIT = {"lock_timeout": "30"}


@asynccontextmanager
async def row_locked(pg: PgDatabase, sql: str, params: tuple[Any, ...]) -> AsyncIterator[None]:
    """Hold ``sql``'s row locks (a ``SELECT ... FOR UPDATE``) in an open transaction."""
    connection = await pg.connect()
    try:
        await connection.execute("BEGIN")
        await connection.execute(sql, params)  # type: ignore[arg-type]
        yield
    finally:
        await connection.close()  # the server may be gone: nothing to roll back then


async def crash_while_blocked(pg: PgDatabase) -> None:
    """Wait until a backend waits on a lock, then kill the server (no clean shutdown)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await pg.value(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ):
        assert loop.time() < deadline, "the write never reached the lock"
        await asyncio.sleep(0.02)
    await asyncio.to_thread(pg.server.stop, "immediate")


async def recover(pg: PgDatabase, *apis: Api) -> None:
    await asyncio.to_thread(pg.server.start)  # crash recovery from the WAL
    for api in apis:
        await wait_ready(api)


async def node_state(pg: PgDatabase, node_id: str) -> dict[str, Any]:
    """The node row and its deployments, as one comparable value."""
    [row] = await pg.rows(
        "SELECT current_schema_version, state_seq, sync_status FROM nodes WHERE id = %s",
        (node_id,),
    )
    deployments = await pg.rows(
        "SELECT name, version, sha256 FROM node_function_deployments"
        " WHERE node_id = %s ORDER BY name",
        (node_id,),
    )
    return {**row, "functions": deployments}


async def sync_record(pg: PgDatabase, sync_id: str) -> dict[str, Any]:
    [row] = await pg.rows(
        "SELECT status, ack_digest IS NOT NULL AS acked, completed_at IS NOT NULL AS completed"
        " FROM sync_records WHERE id = %s",
        (sync_id,),
    )
    return row


async def fleet_generation(pg: PgDatabase) -> tuple[int, list[str]]:
    generation = await pg.value("SELECT generation FROM fleet_state WHERE id = 1")
    changes = await pg.rows("SELECT reason FROM fleet_changes ORDER BY generation")
    return generation, [row["reason"] for row in changes]


async def node_with_pending_plan(api: Api, name: str) -> tuple[Node, dict[str, Any]]:
    node = await api.register(name)
    plan = await api.plan(node)
    assert plan["sync_id"] is not None
    return node, plan


# -- one write, caught mid-transaction ---------------------------------------------------


async def test_an_ack_cut_off_mid_transaction_is_not_applied(
    make_replica: AppFactory, pg: PgDatabase, wasm: Any
) -> None:
    api = await make_replica(database_url=pg.url(**LOCK_WAIT))
    await api.upload_ok("hello", "1.0", wasm.module(1))
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    node, plan = await node_with_pending_plan(api, "edge-1")
    before = await node_state(pg, node.id)
    assert before["current_schema_version"] == 0 and before["functions"] == []

    # The ack updates its sync record first, then the node row: hold the node row.
    async with row_locked(pg, "SELECT id FROM nodes WHERE id = %s FOR UPDATE", (node.id,)):
        ack = asyncio.create_task(within(api.ack(node, plan["sync_id"], plan["target"])))
        await crash_while_blocked(pg)
        await expect_unavailable(await ack)

    await recover(pg, api)
    # Not applied, none of it: the record's update died with the node's.
    assert await sync_record(pg, plan["sync_id"]) == {
        "status": "pending",
        "acked": False,
        "completed": False,
    }
    assert await node_state(pg, node.id) == before

    # The agent's retry (the same ack) is applied whole, once.
    await api.apply(node, plan)
    after = await node_state(pg, node.id)
    assert after["current_schema_version"] == 1
    assert after["state_seq"] == before["state_seq"] + 1
    assert [(f["name"], f["version"]) for f in after["functions"]] == [("hello", "1.0")]
    assert (await sync_record(pg, plan["sync_id"]))["status"] == "success"
    await api.apply(node, plan)  # idempotent
    assert await node_state(pg, node.id) == after


async def test_a_schema_add_cut_off_mid_transaction_is_not_applied(
    make_replica: AppFactory, pg: PgDatabase
) -> None:
    api = await make_replica(database_url=pg.url(**LOCK_WAIT))
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    generation, changes = await fleet_generation(pg)

    # The append inserts the migration, then moves the fleet generation on: hold that row.
    body = {"version": 2, "up_sql": "ALTER TABLE t ADD COLUMN y TEXT;"}
    async with row_locked(pg, "SELECT generation FROM fleet_state WHERE id = 1 FOR UPDATE", ()):
        add = asyncio.create_task(within(api.post("/api/v1/schemas", json=body, headers=ADMIN)))
        await crash_while_blocked(pg)
        await expect_unavailable(await add)

    await recover(pg, api)
    versions = await pg.rows("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == [1]
    assert await fleet_generation(pg) == (generation, changes)

    # The operator's retry is appended whole: the migration, the generation, its change.
    await api.add_schema(2, body["up_sql"])
    assert await fleet_generation(pg) == (generation + 1, [*changes, "schema_added"])
    listed = await api.json("GET", "/api/v1/schemas", headers=ADMIN)
    assert [m["version"] for m in listed["migrations"]] == [1, 2]


async def test_an_upload_whose_database_dies_mid_way_publishes_nothing(
    make_replica: AppFactory, pg: PgDatabase, own_s3: S3Server, wasm: Any, monkeypatch: Any
) -> None:
    """The database dies while the object is being stored (claim taken, not yet published)."""
    api = await make_replica(artifact_url=own_s3.url(), artifact_delivery="proxy")
    node = await api.register("edge-1")
    artifacts = api.services.artifacts
    store_object = artifacts.put

    async def put_while_the_database_dies(key: str, source: Any) -> None:
        await asyncio.to_thread(pg.server.stop, "immediate")
        await store_object(key, source)

    monkeypatch.setattr(artifacts, "put", put_while_the_database_dies)
    await expect_unavailable(await within(api.upload("cut", "1.0", wasm.module(1))))
    monkeypatch.setattr(artifacts, "put", store_object)
    await recover(pg, api)

    # Not published: not listed, not shown, not in any plan (the object may
    # linger under its key, unreachable, until the version is uploaded again).
    assert await pg.rows("SELECT id FROM functions WHERE status = 'ready'") == []
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert listed["functions"] == []
    assert (await api.plan(node))["target"]["functions"] == []

    # The claim could not be released while the database was down. A retry is
    # refused as a conflict (never a 5xx, never a half state) until the claim
    # goes stale, then it takes the claim over and stores its own bytes.
    module = wasm.module(2)
    retry = await within(api.upload("cut", "1.0", module))
    if retry.status == 409:
        await expect_error(retry, 409, "FUNCTION_EXISTS")
        claims = await pg.rows("SELECT status FROM functions WHERE name = 'cut'")
        assert claims == [{"status": "uploading"}]
        stale = format_time(utcnow() - timedelta(hours=1))
        async with await pg.connect() as connection:
            await connection.execute(
                "UPDATE functions SET created_at = %s WHERE status = 'uploading'", (stale,)
            )
        retry = await within(api.upload("cut", "1.0", module))
    assert retry.status == 201, await retry.text()
    created = json.loads(await retry.text())
    download = await within(api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN))
    assert download.status == 200 and await download.read() == module
    assert [f["name"] for f in (await api.plan(node))["target"]["functions"]] == ["cut"]


# -- many writes racing a crash ----------------------------------------------------------


async def test_acks_racing_a_crash_are_each_all_or_nothing(
    make_replica: AppFactory, pg: PgDatabase, wasm: Any
) -> None:
    api = await make_replica(database_url=pg.url(pool_max="8"))
    await api.upload_ok("hello", "1.0", wasm.module(1))
    await api.add_schema(1, "CREATE TABLE t (x INTEGER);")
    token = await api.enrollment_token(max_uses=24)
    nodes = [await api.register(f"edge-{i}", enrollment_token=token) for i in range(24)]
    plans = [await api.plan(node) for node in nodes]
    before = {node.id: await node_state(pg, node.id) for node in nodes}

    acks = [
        asyncio.create_task(within(api.ack(node, plan["sync_id"], plan["target"])))
        for node, plan in zip(nodes, plans, strict=True)
    ]
    # Crash once a third of the acks are through: the others are anywhere by then.
    pending = set(acks)
    while len(pending) > len(acks) * 2 // 3:
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.to_thread(pg.server.stop, "immediate")
    responses = await asyncio.gather(*acks)
    outcomes = [response.status for response in responses]
    assert set(outcomes) <= {200, 503}, outcomes
    for response in responses:
        if response.status == 503:
            await expect_unavailable(response)

    await recover(pg, api)
    applied = 0
    for node, plan, status in zip(nodes, plans, outcomes, strict=True):
        record = await sync_record(pg, plan["sync_id"])
        state = await node_state(pg, node.id)
        if record["acked"]:
            # Applied (maybe although the answer was lost): all of it.
            applied += 1
            assert record == {"status": "success", "acked": True, "completed": True}
            assert state["current_schema_version"] == 1
            assert state["state_seq"] == before[node.id]["state_seq"] + 1
            assert [(f["name"], f["version"]) for f in state["functions"]] == [("hello", "1.0")]
        else:
            assert status == 503, f"{node.id}: answered {status} but not recorded"
            assert record == {"status": "pending", "acked": False, "completed": False}
            assert state == before[node.id]
    assert applied >= outcomes.count(200)

    # Every agent retries its ack: each is recorded once, whatever happened before.
    for node, plan in zip(nodes, plans, strict=True):
        await api.apply(node, plan)
        state = await node_state(pg, node.id)
        assert state["current_schema_version"] == 1
        assert state["state_seq"] == before[node.id]["state_seq"] + 1
        assert state["sync_status"] == "idle"
