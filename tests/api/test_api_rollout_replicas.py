"""Rollouts across replicas on one PostgreSQL database: one replica decides at a time
(the lease row), any replica continues a rollout another started, and a replica
that died holding the lease is replaced once its lease expires."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from api_support import ADMIN, Api
from test_api_replicas import past_the_bound

from appliance.rollouts.engine import ROLLOUTS, RolloutEngine
from edgesync.protocol import utcnow

pytestmark = pytest.mark.databases("postgresql")


# The engines' own rounds stay out of the way: the test runs every round itself.
QUIET = {"rollout_interval": 60.0}


async def replicas(make_api: Any, make_database_url: Any) -> tuple[Api, Api]:
    url = make_database_url()
    first: Api = await make_api(database_url=url, **QUIET)
    second: Api = await make_api(database_url=url, data_dir=first.config.data_dir, **QUIET)
    return first, second


def engine(api: Api) -> RolloutEngine:
    return api.client.app[ROLLOUTS]


async def test_a_rollout_started_on_one_replica_is_finished_by_another(
    make_api: Any, make_database_url: Any, wasm: Any
) -> None:
    first, second = await replicas(make_api, make_database_url)
    nodes = [await first.register() for _ in range(2)]
    await first.upload_ok("hello", "1.0", wasm.module(1))
    for node in nodes:
        await first.apply(node, await first.plan(node))
    await first.json("PUT", "/api/v1/fleet", json={"auto_release": False}, headers=ADMIN)
    await first.upload_ok("hello", "2.0", wasm.module(2))
    body = {"schema_version": 0, "functions": [{"name": "hello", "version": "2.0"}]}
    release = await first.json("POST", "/api/v1/releases", 201, json=body, headers=ADMIN)
    rollout = await first.json(
        "POST",
        "/api/v1/rollouts",
        201,
        json={"release_id": release["id"], "waves": [1, "100%"]},
        headers=ADMIN,
    )
    canary, rest = sorted(nodes, key=lambda n: n.id)
    past_the_bound(second)
    await second.apply(canary, await second.plan(canary))

    # Another replica holds the lease (a round in progress): the second must wait.
    # (Not the first replica's own engine id: its engine, woken by the ack, may
    # finish a round meanwhile and drop the lease it holds under that id.)
    now = utcnow()
    holder = "replica-mid-round"
    assert await first.services.store.take_rollout_lease(holder, now, 30)
    assert await engine(second).evaluate_all() == 0
    await first.services.store.drop_rollout_lease(holder)
    assert await engine(second).evaluate_all() == 1
    shown = await second.json("GET", f"/api/v1/rollouts/{rollout['id']}", headers=ADMIN)
    assert [w["state"] for w in shown["waves"]] == ["done", "running"]

    # The second replica dies holding the lease; a replica started afterwards (nothing in
    # its memory) takes over once the lease expired, and finishes from the database.
    assert await second.services.store.take_rollout_lease(engine(second).owner, utcnow(), 30)
    third: Api = await make_api(
        database_url=first.config.database_url, data_dir=first.config.data_dir, **QUIET
    )
    await third.apply(rest, await third.plan(rest))
    assert await engine(third).evaluate_all() == 0
    engine(third).clock = lambda: utcnow() + timedelta(seconds=31)
    assert await engine(third).evaluate_all() == 1
    done = await third.json("GET", f"/api/v1/rollouts/{rollout['id']}", headers=ADMIN)
    assert done["state"] == "completed"
    assert done["waves"][1]["nodes"] == {"pending": 0, "applied": 1, "failed": 0}
