"""Replicas: each notifies its own broker's clients from the database, with no link
between them.

Two control planes on one PostgreSQL database and one artifact folder, each
with its own embedded broker. A node connected to replica B hears about an
upload made through replica A: A records the change with the generation bump,
B's notifier sees the new generation on its next look at the database.
"""

from __future__ import annotations

import time
from pathlib import Path

from mqtt_support import (
    PUSH_BOUND,
    SLOW_POLL,
    Plane,
    PlaneFactory,
    converge_time,
    eventually,
    mqtt_client,
    running_agent,
    suback,
)
from postgres_support import PostgresSandbox

from edgesync.mqtt import FLEET_TOPIC, Notification

WATCH = 0.5  # seconds between a replica's looks at the database


async def two_replicas(
    make_plane: PlaneFactory, postgres: PostgresSandbox, tmp_path: Path
) -> tuple[Plane, Plane]:
    shared = {
        "database_url": postgres.new_url(),
        "artifact_url": f"file://{tmp_path / 'shared-artifacts'}",
        "mqtt_watch_interval": WATCH,
    }
    a = await make_plane(data_dir=tmp_path / "replica-a", **shared)
    b = await make_plane(data_dir=tmp_path / "replica-b", **shared)
    assert a.push.notifier._store.db.shared and b.push.notifier._store.db.shared
    return a, b


async def test_a_node_on_replica_b_hears_of_an_upload_through_replica_a(
    make_plane: PlaneFactory, postgres: PostgresSandbox, tmp_path: Path
) -> None:
    a, b = await two_replicas(make_plane, postgres, tmp_path)
    node = await b.register()
    assert node.mqtt is not None and node.mqtt["url"] == f"mqtt://127.0.0.1:{b.mqtt_port}"
    async with (
        mqtt_client(b.mqtt_port, node.id, node.token) as (on_b, inbox_b),
        mqtt_client(a.mqtt_port, node.id, node.token) as (on_a, inbox_a),
    ):
        # One node token opens both brokers: the signing key is shared through the database.
        assert await suback(on_b, FLEET_TOPIC) == 0
        assert await suback(on_a, FLEET_TOPIC) == 0
        started = time.monotonic()
        await a.upload("hello", "1.0.0")
        generation = await a.push.notifier._store.generation()
        expected = Notification("function_uploaded", f"g{generation}")
        await inbox_b.wait_for(FLEET_TOPIC, expected.etag)
        through_b = time.monotonic() - started
        await inbox_a.wait_for(FLEET_TOPIC, expected.etag)
        assert inbox_b.on(FLEET_TOPIC) == [expected] == inbox_a.on(FLEET_TOPIC)
        # B learns of it on its next look at the database, not later.
        assert through_b < WATCH + PUSH_BOUND

        await b.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        await inbox_a.wait_for(FLEET_TOPIC, f"g{generation + 1}")
        await inbox_b.wait_for(FLEET_TOPIC, f"g{generation + 1}")
    # Each replica published each change exactly once, to its own broker.
    for replica in (a, b):
        await eventually(lambda r=replica: r.push.notifier.stats.published == 2, "two publications")


async def test_an_agent_of_replica_b_converges_at_once_on_a_release_made_through_a(
    make_plane: PlaneFactory, postgres: PostgresSandbox, tmp_path: Path
) -> None:
    a, b = await two_replicas(make_plane, postgres, tmp_path)
    token = await b.enrollment_token()
    async with running_agent(
        b.url, tmp_path / "edge", token, poll_interval_seconds=SLOW_POLL
    ) as running:
        assert running.push is not None and running.push.address.port == b.mqtt_port
        await eventually(lambda: running.push and running.push.connected, "the MQTT login")
        await running.settle()
        assert await converge_time(a, running, "hello", "1.0.0") < WATCH + PUSH_BOUND
