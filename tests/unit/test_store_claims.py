"""Upload claims last as long as their upload in a live serve instance, and no longer.

Runs on every database kind (the ``store`` fixture), SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_store import function

from appliance.store.store import Store
from edgesync.errors import FunctionExists, NotFound
from edgesync.protocol import utcnow

LEASE = timedelta(seconds=30)
ME, OTHER = "a" * 32, "b" * 32


async def live_instance(store: Store, instance_id: str, lease: timedelta = LEASE) -> None:
    await store.announce_instance(instance_id, "host", "/data", utcnow(), lease)


async def test_a_failed_upload_of_this_instance_is_taken_over_at_once(store: Store) -> None:
    await live_instance(store, ME)
    failed = function()
    await store.reserve_function(failed, utcnow(), ME, {failed.id})
    # The upload failed and its release did not get through: it is no longer live.
    retry = function()
    await store.reserve_function(retry, utcnow(), ME, {retry.id})
    await store.publish_function(retry.id)
    with pytest.raises(NotFound):
        await store.publish_function(failed.id)
    assert (await store.get_function(retry.id)).id == retry.id


async def test_a_live_upload_still_wins_against_a_concurrent_one(store: Store) -> None:
    await live_instance(store, ME)
    await live_instance(store, OTHER)
    first = function()
    await store.reserve_function(first, utcnow(), ME, {first.id})
    second = function()
    with pytest.raises(FunctionExists):  # the same instance, first upload still live
        await store.reserve_function(second, utcnow(), ME, {first.id, second.id})
    with pytest.raises(FunctionExists):  # another live instance
        await store.reserve_function(function(), utcnow(), OTHER, set())


async def test_the_claim_of_an_instance_whose_lease_ran_out_is_taken_over(store: Store) -> None:
    await live_instance(store, OTHER, lease=timedelta(seconds=-1))
    crashed = function()
    await store.reserve_function(crashed, utcnow(), OTHER, {crashed.id})
    await live_instance(store, ME)
    retry = function()
    await store.reserve_function(retry, utcnow(), ME, {retry.id})
    await store.publish_function(retry.id)


async def test_retiring_an_instance_releases_its_claims(store: Store) -> None:
    await live_instance(store, OTHER)
    killed = function()
    await store.reserve_function(killed, utcnow(), OTHER, {killed.id})
    assert await store.other_instances(ME) == [OTHER]
    assert await store.retire_instances([OTHER]) == 1
    assert await store.other_instances(ME) == []
    await live_instance(store, ME)
    retry = function()
    await store.reserve_function(retry, utcnow(), ME, {retry.id})


async def test_collecting_drops_only_claims_whose_upload_is_over(store: Store) -> None:
    await live_instance(store, ME)
    await live_instance(store, OTHER)
    mine_live, mine_failed = function("a"), function("b")
    theirs = function("c")
    legacy_old = function("d", created=utcnow() - timedelta(hours=1))
    for record, owner in ((mine_live, ME), (mine_failed, ME), (theirs, OTHER)):
        await store.reserve_function(record, utcnow(), owner, {record.id})
    await store.reserve_function(legacy_old, utcnow() - timedelta(hours=1))  # no owner
    dropped = await store.collect_dead_claims(ME, {mine_live.id}, utcnow())
    assert dropped == 2  # mine_failed and the ownerless stale one
    await store.publish_function(mine_live.id)
    await store.publish_function(theirs.id)
    # OTHER's lease runs out: its next claim goes with the next collection.
    await live_instance(store, OTHER, lease=timedelta(seconds=-1))
    late = function("e")
    await store.reserve_function(late, utcnow(), OTHER, {late.id})
    assert await store.collect_dead_claims(ME, set(), utcnow()) == 1
