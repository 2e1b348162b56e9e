"""The metadata store over a real database (``database_url``: SQLite today).

Every test goes through the ``store`` fixture, so the same tests run against
each database kind listed in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest

from appliance.store.records import (
    EnrollmentTokenRecord,
    FunctionRecord,
    MigrationRecord,
    NodeRecord,
    SyncRecord,
)
from appliance.store.schema import MIGRATIONS
from appliance.store.store import Store
from appliance.store.syncs import APPLIED, REPEATED
from edgesync.errors import (
    FunctionExists,
    InvalidEnrollmentToken,
    NotFound,
    SchemaVersionConflict,
    ValidationFailed,
)
from edgesync.protocol import Ack, ErrorInfo, FunctionRef, NodeState, format_time, utcnow

SHA_A = "a" * 64
SHA_B = "b" * 64


# -- builders -------------------------------------------------------------------------


async def enrollment(
    store: Store, *, max_uses: int = 100, ttl: timedelta = timedelta(hours=1)
) -> str:
    now = utcnow()
    token_id = uuid.uuid4().hex[:16]
    await store.create_enrollment_token(
        EnrollmentTokenRecord(
            token_id, "$2b$04$hash", "eu", max_uses, 0, format_time(now + ttl), format_time(now)
        )
    )
    return token_id


async def add_node(
    store: Store,
    enrollment_id: str,
    *,
    name: str = "edge",
    region: str | None = "eu",
    created: datetime | None = None,
    poll: int = 30,
) -> NodeRecord:
    now = created or utcnow()
    node = NodeRecord(
        id=str(uuid.uuid4()),
        name=name,
        region=region,
        labels={"k": "v"},
        current_schema_version=0,
        state_seq=0,
        token_jti=uuid.uuid4().hex,
        token_expires_at=format_time(now + timedelta(days=90)),
        poll_interval_seconds=poll,
        agent_version=None,
        sync_status="idle",
        last_heartbeat_at=format_time(now),
        offline_after=format_time(now + timedelta(seconds=3 * poll)),
        last_sync_at=None,
        created_at=format_time(now),
    )
    await store.register_node(node, "digest-" + node.token_jti, enrollment_id)
    return node


def function(
    name: str = "hello", version: str = "1.0", sha: str = SHA_A, created: datetime | None = None
) -> FunctionRecord:
    return FunctionRecord(
        id=str(uuid.uuid4()),
        name=name,
        version=version,
        sha256=sha,
        size_bytes=42,
        storage_key=f"{name}/{version}/function.wasm",
        created_at=format_time(created or utcnow()),
    )


def migration(version: int) -> MigrationRecord:
    sql = f"CREATE TABLE t{version} (x INTEGER);"
    return MigrationRecord(version, f"m{version}", sql, None, "c" * 64, format_time(utcnow()))


async def open_plan(
    store: Store, node_id: str, *, added: int = 1, removed: int = 0, schemas: int = 0
) -> SyncRecord:
    record = SyncRecord(
        id=str(uuid.uuid4()),
        node_id=node_id,
        sync_type="full",
        status="pending",
        plan_etag=f'"{uuid.uuid4().hex}"',  # a distinct plan each time
        started_at=format_time(utcnow()),
        completed_at=None,
        error_code=None,
        error_message=None,
        functions_added=added,
        functions_removed=removed,
        schemas_applied=schemas,
    )
    assert await store.open_sync(record) == record.id
    return record


def success(sync_id: str, *refs: FunctionRef, schema: int = 0) -> Ack:
    return Ack(sync_id, "success", NodeState(schema, refs))


# -- lifecycle ------------------------------------------------------------------------


async def test_migrate_is_idempotent(store: Store) -> None:
    latest = MIGRATIONS[-1].version
    assert await store.migrate() == latest
    assert await store.migrate() == latest
    rows = await store.db.fetchall("SELECT version FROM control_plane_migrations ORDER BY version")
    assert [row["version"] for row in rows] == [m.version for m in MIGRATIONS]


async def test_secret_is_created_once(store: Store) -> None:
    first = await store.secret("k", lambda: "one")
    assert first == "one"
    assert await store.secret("k", lambda: "two") == "one"
    assert await store.secret("other", lambda: "three") == "three"


async def test_ping(store: Store) -> None:
    await store.db.ping()
    assert store.db.connections_in_use() == 0


# -- enrollment and nodes -------------------------------------------------------------


async def test_register_and_get_node(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id, name="edge-1")
    fetched = await store.get_node(node.id)
    assert fetched == node
    assert fetched.state() == NodeState()
    record = await store.get_enrollment_token(token_id)
    assert record is not None and record.uses == 1
    assert await store.get_enrollment_token("missing") is None
    with pytest.raises(NotFound):
        await store.get_node(str(uuid.uuid4()))


async def test_registration_spends_enrollment_uses(store: Store) -> None:
    token_id = await enrollment(store, max_uses=2)
    await add_node(store, token_id)
    await add_node(store, token_id)
    with pytest.raises(InvalidEnrollmentToken):
        await add_node(store, token_id)
    nodes, _ = await store.list_nodes(now=utcnow())
    assert len(nodes) == 2


async def test_registration_refuses_an_expired_enrollment_token(store: Store) -> None:
    token_id = await enrollment(store, ttl=timedelta(seconds=30))
    with pytest.raises(InvalidEnrollmentToken):
        await add_node(store, token_id, created=utcnow() + timedelta(seconds=31))


async def test_concurrent_registrations_never_overspend(store: Store) -> None:
    token_id = await enrollment(store, max_uses=3)
    results = await asyncio.gather(
        *(add_node(store, token_id) for _ in range(8)), return_exceptions=True
    )
    assert sum(isinstance(r, NodeRecord) for r in results) == 3
    assert all(isinstance(r, (NodeRecord, InvalidEnrollmentToken)) for r in results)


async def test_list_nodes_pages_through_everything_once(store: Store) -> None:
    token_id = await enrollment(store)
    start = utcnow()
    ids = []
    for index in range(7):
        # Two nodes share each timestamp: the cursor must break ties by id.
        created = start + timedelta(seconds=index // 2)
        ids.append((await add_node(store, token_id, name=f"n{index}", created=created)).id)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        nodes, cursor = await store.list_nodes(now=start, limit=3, cursor=cursor)
        pages += 1
        seen += [n.id for n in nodes]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_list_nodes_exact_page_has_no_cursor(store: Store) -> None:
    token_id = await enrollment(store)
    for _ in range(2):
        await add_node(store, token_id)
    nodes, cursor = await store.list_nodes(now=utcnow(), limit=2)
    assert len(nodes) == 2 and cursor is None


@pytest.mark.parametrize("cursor", ["!!!", "bm90LWVub3VnaC1wYXJ0cw"])
async def test_list_nodes_refuses_a_bad_cursor(store: Store, cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        await store.list_nodes(now=utcnow(), cursor=cursor)


async def test_node_status_online_syncing_offline(store: Store) -> None:
    token_id = await enrollment(store)
    online = await add_node(store, token_id, name="online", region="eu")
    syncing = await add_node(store, token_id, name="syncing", region="us")
    offline = await add_node(store, token_id, name="offline", region="us")
    await open_plan(store, syncing.id)
    # A heartbeat long ago: more than 3 poll intervals without one since.
    await store.heartbeat(offline.id, utcnow() - timedelta(seconds=91), None, None)
    now = utcnow()
    statuses = {n.name: n.status(now) for n in (await store.list_nodes(now=now))[0]}
    assert statuses == {"online": "online", "syncing": "syncing", "offline": "offline"}
    for status, expected in (("online", online), ("syncing", syncing), ("offline", offline)):
        nodes, _ = await store.list_nodes(now=now, status=status)
        assert [n.id for n in nodes] == [expected.id]
    assert await store.count_nodes_by_status(now) == {"online": 1, "syncing": 1, "offline": 1}
    by_region, _ = await store.list_nodes(now=now, region="us")
    assert {n.name for n in by_region} == {"syncing", "offline"}
    # A fresh heartbeat brings the node back.
    await store.heartbeat(offline.id, utcnow(), "1.2.3", '"e"')
    back = await store.get_node(offline.id)
    assert back.status(utcnow()) == "online" and back.agent_version == "1.2.3"


async def test_offline_boundary_is_three_poll_intervals(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id, poll=10)
    beat = utcnow()
    await store.heartbeat(node.id, beat, None, None)
    record = await store.get_node(node.id)
    assert record.status(beat + timedelta(seconds=29)) == "online"
    assert record.status(beat + timedelta(seconds=31)) == "offline"


async def test_heartbeat_of_unknown_node(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.heartbeat(str(uuid.uuid4()), utcnow(), None, None)


async def test_rotate_token_swaps_the_stamp(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    stamp = await store.node_stamp(node.id)
    assert stamp is not None and stamp.token_jti == node.token_jti
    assert await store.rotate_token(node.id, node.token_jti, "new-jti", "h", "x")
    assert not await store.rotate_token(node.id, node.token_jti, "newer-jti", "h", "x")
    stamp = await store.node_stamp(node.id)
    assert stamp is not None and stamp.token_jti == "new-jti"
    assert await store.node_stamp(str(uuid.uuid4())) is None


async def add_function(store: Store, record: FunctionRecord) -> None:
    """An upload as the API does it: claim the version, then publish it."""
    await store.reserve_function(record, utcnow())
    await store.publish_function(record.id)


# -- functions ------------------------------------------------------------------------


async def test_function_insert_get_and_immutability(store: Store) -> None:
    record = function()
    await add_function(store, record)
    assert await store.get_function(record.id) == record
    assert await store.function_exists("hello", "1.0")
    assert not await store.function_exists("hello", "1.1")
    with pytest.raises(FunctionExists):
        await add_function(store, function(sha=SHA_B))
    with pytest.raises(NotFound):
        await store.get_function(str(uuid.uuid4()))


async def test_concurrent_inserts_of_one_version_have_one_winner(store: Store) -> None:
    records = [function(sha=f"{i}" * 64) for i in range(5)]
    results = await asyncio.gather(
        *(add_function(store, r) for r in records), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, FunctionExists) for r in results) == 4
    listed, _ = await store.list_functions(name="hello")
    assert len(listed) == 1


async def test_deleted_function_is_hidden_but_its_version_is_never_reused(store: Store) -> None:
    record = function()
    await add_function(store, record)
    deleted = await store.delete_function(record.id, utcnow())
    assert deleted.id == record.id
    with pytest.raises(NotFound):
        await store.get_function(record.id)
    assert (await store.get_function(record.id, include_deleted=True)).deleted_at is not None
    with pytest.raises(NotFound):
        await store.delete_function(record.id, utcnow())
    assert (await store.list_functions())[0] == []
    assert await store.function_exists("hello", "1.0")
    with pytest.raises(FunctionExists):
        await add_function(store, function())


async def test_list_functions_filters_and_pages(store: Store) -> None:
    start = utcnow()
    for index in range(5):
        await add_function(
            store, function("alpha", f"{index}.0", created=start + timedelta(seconds=index))
        )
    await add_function(store, function("beta", "1.0", created=start))
    alphas, cursor = await store.list_functions(name="alpha", limit=2)
    assert [f.version for f in alphas] == ["0.0", "1.0"] and cursor is not None
    more, cursor = await store.list_functions(name="alpha", limit=2, cursor=cursor)
    assert [f.version for f in more] == ["2.0", "3.0"] and cursor is not None
    rest, cursor = await store.list_functions(name="alpha", limit=2, cursor=cursor)
    assert [f.version for f in rest] == ["4.0"] and cursor is None
    everything, _ = await store.list_functions()
    assert len(everything) == 6
    with pytest.raises(ValidationFailed):
        await store.list_functions(cursor="@@@")


# -- migrations and the target --------------------------------------------------------


async def test_migrations_are_append_only_by_one(store: Store) -> None:
    await store.add_migration(migration(1))
    with pytest.raises(SchemaVersionConflict):
        await store.add_migration(migration(1))
    with pytest.raises(SchemaVersionConflict):
        await store.add_migration(migration(3))
    await store.add_migration(migration(2))
    assert [m.version for m in await store.list_migrations()] == [1, 2]


async def test_concurrent_migration_appends_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.add_migration(migration(1)) for _ in range(4)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(r is None or isinstance(r, SchemaVersionConflict) for r in results)


async def test_target_is_every_migration_and_newest_live_version(store: Store) -> None:
    start = utcnow()
    await store.add_migration(migration(1))
    await store.add_migration(migration(2))
    v1 = function("hello", "1.0", SHA_A, start)
    # Newest by upload time, not by version string order.
    v09 = function("hello", "0.9", SHA_B, start + timedelta(seconds=1))
    other = function("other", "3", SHA_A, start)
    for record in (v1, v09, other):
        await add_function(store, record)
    target = await store.target()
    assert target.schema_version == 2
    assert {(f.name, f.version) for f in target.functions} == {("hello", "0.9"), ("other", "3")}
    await store.delete_function(v09.id, utcnow())
    target = await store.target()
    assert {(f.name, f.version) for f in target.functions} == {("hello", "1.0"), ("other", "3")}
    await store.delete_function(v1.id, utcnow())
    target = await store.target()
    assert {(f.name, f.version) for f in target.functions} == {("other", "3")}


async def test_generation_moves_with_every_target_change(store: Store) -> None:
    seen = [await store.generation()]

    async def moved() -> bool:
        seen.append(await store.generation())
        return seen[-1] > seen[-2]

    record = function()
    await add_function(store, record)
    assert await moved()
    await store.add_migration(migration(1))
    assert await moved()
    await store.delete_function(record.id, utcnow())
    assert await moved()
    # Node-level writes do not touch the fleet generation.
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    await store.heartbeat(node.id, utcnow(), None, None)
    assert not await moved()
    assert (await store.target()).generation == seen[-1]


async def test_node_stamp_follows_generation_and_state(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    first = await store.node_stamp(node.id)
    assert first is not None and first.state_seq == 0
    await add_function(store, function())
    second = await store.node_stamp(node.id)
    assert second is not None and second.generation > first.generation
    sync = await open_plan(store, node.id)
    await store.record_ack(node.id, success(sync.id), utcnow())
    third = await store.node_stamp(node.id)
    assert third is not None and third.state_seq == 1
    assert third.generation == second.generation


# -- sync records and acks -------------------------------------------------------------


async def test_success_ack_saves_state_and_closes_the_record(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    sync = await open_plan(store, node.id, added=1, schemas=2)
    assert (await store.get_node(node.id)).sync_status == "pending"
    ref = FunctionRef("hello", "1.0", SHA_A)
    result = await store.record_ack(node.id, success(sync.id, ref, schema=2), utcnow())
    record = result.record
    assert result.outcome == APPLIED
    assert record.status == "success" and record.completed_at is not None
    assert (record.functions_added, record.schemas_applied) == (1, 2)
    saved = await store.get_node(node.id)
    assert saved.state() == NodeState(2, (ref,))
    assert saved.state_seq == 1 and saved.sync_status == "idle"
    assert saved.last_sync_at == record.completed_at


async def test_same_ack_twice_records_once(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    sync = await open_plan(store, node.id)
    ack = success(sync.id, FunctionRef("hello", "1.0", SHA_A))
    first = await store.record_ack(node.id, ack, utcnow())
    again = await store.record_ack(node.id, ack, utcnow() + timedelta(seconds=5))
    assert (first.outcome, again.outcome) == (APPLIED, REPEATED)
    assert again.recorded and again.record == first.record
    assert (await store.get_node(node.id)).state_seq == 1
    assert len(await store.sync_history(node.id, 10)) == 1


async def test_failed_ack_records_the_error(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    sync = await open_plan(store, node.id, added=2, removed=1, schemas=1)
    ack = Ack(
        sync.id,
        "failed",
        NodeState(0, ()),
        ErrorInfo("MIGRATION_FAILED", "no such table: x", {"statement": 0}, False),
    )
    result = await store.record_ack(node.id, ack, utcnow())
    record = result.record
    assert result.outcome == APPLIED
    assert (record.status, record.error_code, record.error_message) == (
        "failed",
        "MIGRATION_FAILED",
        "no such table: x",
    )
    # Nothing took effect: the counters say so.
    assert (record.functions_added, record.functions_removed, record.schemas_applied) == (0, 0, 0)
    saved = await store.get_node(node.id)
    assert saved.last_sync_at is None and saved.sync_status == "idle"


async def test_ack_of_unknown_or_foreign_sync(store: Store) -> None:
    token_id = await enrollment(store)
    mine = await add_node(store, token_id)
    theirs = await add_node(store, token_id)
    sync = await open_plan(store, theirs.id)
    with pytest.raises(NotFound):
        await store.record_ack(mine.id, success(sync.id), utcnow())
    with pytest.raises(NotFound):
        await store.record_ack(mine.id, success(str(uuid.uuid4())), utcnow())
    assert (await store.get_sync(sync.id)) is not None
    assert (await store.get_sync(sync.id)).status == "pending"  # type: ignore[union-attr]


async def test_newer_plan_supersedes_a_pending_one(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    old = await open_plan(store, node.id)
    new = await open_plan(store, node.id)
    superseded = await store.get_sync(old.id)
    assert superseded is not None
    assert (superseded.status, superseded.error_code) == ("failed", "SUPERSEDED")
    history = await store.sync_history(node.id, 10)
    assert [r.id for r in history] == [new.id, old.id]  # newest first
    assert [r.status for r in history] == ["pending", "failed"]


async def test_history_limit(store: Store) -> None:
    token_id = await enrollment(store)
    node = await add_node(store, token_id)
    ids = [(await open_plan(store, node.id)).id for _ in range(4)]
    history = await store.sync_history(node.id, 2)
    assert [r.id for r in history] == ids[::-1][:2]


async def test_upload_claims_are_invisible_until_published(store: Store) -> None:
    record = function()
    await store.reserve_function(record, utcnow())
    with pytest.raises(NotFound):
        await store.get_function(record.id)
    assert (await store.target()).functions == []
    generation = await store.generation()
    await store.publish_function(record.id)
    assert await store.generation() == generation + 1
    assert [f.id for f in (await store.target()).functions] == [record.id]


async def test_a_live_claim_refuses_a_second_upload_and_a_stale_one_is_taken_over(
    store: Store,
) -> None:
    crashed = function(created=utcnow() - timedelta(hours=1))
    await store.reserve_function(crashed, utcnow() - timedelta(hours=1))
    with pytest.raises(FunctionExists):  # a fresh claim of the same version is live
        await store.reserve_function(function(), utcnow() - timedelta(hours=1))
    # An hour later the claim is stale: the API's pre-check lets the upload through.
    assert not await store.function_exists("hello", "1.0")
    retry = function()
    await store.reserve_function(retry, utcnow())  # ... and it takes the claim over
    await store.publish_function(retry.id)
    assert (await store.get_function(retry.id)).sha256 == retry.sha256


async def test_a_released_claim_frees_the_version(store: Store) -> None:
    first = function()
    await store.reserve_function(first, utcnow())
    await store.release_function(first.id)
    assert not await store.function_exists("hello", "1.0")
    await add_function(store, function())
