"""Replicas on one PostgreSQL: the node change feed keeps stamps cached until they change.

A token rotated or an ack applied through one replica reaches the other through
the change feed its watch reads (appliance/store/node_changes.py), within the
watch's bound; a stamp nothing changed is not read again when its TTL passes.
Each replica's cache clock is frozen and moved by hand, and its watch is driven
with ``step()``: no test waits on the wall clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from api_support import Api, expect_error

from appliance.fleet_cache import STAMP_TTL_SECONDS
from appliance.store.records import NodeStamp

pytestmark = pytest.mark.databases("postgresql")


async def replicas(make_api, make_database_url) -> tuple[Api, Api]:  # type: ignore[no-untyped-def]
    url = make_database_url()
    first: Api = await make_api(database_url=url)
    second: Api = await make_api(database_url=url, data_dir=first.config.data_dir)
    return first, second


class FrozenClock:
    """A replica's cache clock that moves only when the test says so."""

    def __init__(self, api: Api) -> None:
        self.now = api.services.cache._clock()
        api.services.cache._clock = self  # type: ignore[method-assign]

    def __call__(self) -> float:
        return self.now


def count_stamp_reads(api: Api) -> list[str]:
    """Record each stamp the replica's cache reads from the database."""
    cache = api.services.cache
    load: Callable[[str], Awaitable[NodeStamp | None]] = cache._load_stamp
    reads: list[str] = []

    async def counted(node_id: str) -> NodeStamp | None:
        reads.append(node_id)
        return await load(node_id)

    cache._load_stamp = counted  # type: ignore[method-assign]
    return reads


async def test_a_token_rotated_on_one_replica_is_refused_by_the_other_after_one_watch_step(
    make_api, make_database_url
) -> None:
    first, second = await replicas(make_api, make_database_url)
    FrozenClock(second)  # no time passes on the second: its stamp TTL never runs out
    node = await first.register()
    await second.services.watch.step()
    idle = await second.plan(node)  # the second caches the node's stamp
    rotated = await first.json(
        "POST", f"/api/v1/nodes/{node.id}/token/rotate", json={}, headers=node.headers
    )
    await second.services.watch.step()  # the change feed names the node
    await expect_error(await second.poll(node, idle["etag"]), 401, "UNAUTHORIZED")
    fresh = {"Authorization": f"Bearer {rotated['token']}"}
    assert (await second.get(f"/api/v1/nodes/{node.id}/sync", headers=fresh)).status == 200


async def test_an_ack_on_one_replica_moves_the_plan_the_other_serves(
    make_api, make_database_url
) -> None:
    first, second = await replicas(make_api, make_database_url)
    FrozenClock(second)
    node = await first.register()
    await first.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY);")
    await second.services.watch.step()
    plan = await second.plan(node)  # stamp and plan cached on the second
    assert [action["type"] for action in plan["actions"]] == ["apply_schema"]

    await first.apply(node, plan)
    await second.services.watch.step()
    settled = await second.plan(node, plan["etag"])
    assert settled["actions"] == [] and settled["etag"] != plan["etag"]


async def test_a_stamp_nothing_changed_is_not_read_again_when_its_ttl_passes(
    make_api, make_database_url
) -> None:
    first, second = await replicas(make_api, make_database_url)
    clock = FrozenClock(second)
    node, other = await first.register(), await first.register()
    await second.services.watch.step()
    idle = await second.plan(node)
    other_idle = await second.plan(other)
    reads = count_stamp_reads(second)

    # Another node changes meanwhile (its token); this one does not.
    await first.json(
        "POST", f"/api/v1/nodes/{other.id}/token/rotate", json={}, headers=other.headers
    )
    for _ in range(3):  # three watch intervals, each well past the stamp TTL
        clock.now += 2 * STAMP_TTL_SECONDS
        await second.services.watch.step()
        assert (await second.poll(node, idle["etag"])).status == 304
    assert reads == []  # the unchanged stamp was served from memory every time
    await expect_error(await second.poll(other, other_idle["etag"]), 401, "UNAUTHORIZED")
    assert reads == [other.id]  # only the changed one was read again


async def test_without_the_watch_a_stamp_falls_back_to_its_ttl(make_api, make_database_url) -> None:
    first, second = await replicas(make_api, make_database_url)
    clock = FrozenClock(second)
    node = await first.register()
    await second.services.watch.step()
    idle = await second.plan(node)
    reads = count_stamp_reads(second)
    clock.now += 2 * STAMP_TTL_SECONDS  # the watch did not read the feed meanwhile
    assert (await second.poll(node, idle["etag"])).status == 304
    assert reads == [node.id]
