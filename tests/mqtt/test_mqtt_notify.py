"""Notifications: what is published when, coalescing, retries, and what nodes are told."""

from __future__ import annotations

import asyncio
import time

import pytest
from mqtt_support import (
    Gate,
    Plane,
    PlaneFactory,
    anonymous_broker,
    eventually,
    free_port,
    mqtt_client,
    suback,
)

from appliance.push.broker import PublishFailed
from appliance.push.notifier import Notifier
from appliance.store.records import MigrationRecord
from appliance.store.store import Store
from edgesync.mqtt import FLEET_TOPIC, Notification, node_topic
from edgesync.protocol import format_time, utcnow


async def test_every_change_that_alters_plans_is_published(plane: Plane) -> None:
    node = await plane.register()
    async with mqtt_client(plane.mqtt_port, node.id, node.token) as (client, inbox):
        assert await suback(client, FLEET_TOPIC) == 0
        start = await plane.push.notifier._store.generation()

        created = await plane.upload("hello", "1.0.0")
        await inbox.wait_for(FLEET_TOPIC, f"g{start + 1}")
        await plane.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        await inbox.wait_for(FLEET_TOPIC, f"g{start + 2}")
        await plane.delete_function(created["id"])
        await inbox.wait_for(FLEET_TOPIC, f"g{start + 3}")

        assert inbox.on(FLEET_TOPIC) == [
            Notification("function_uploaded", f"g{start + 1}"),
            Notification("schema_added", f"g{start + 2}"),
            Notification("function_deleted", f"g{start + 3}"),
        ]
        # Heartbeats, polls and acks change no plan: nothing is published for them.
        await plane.call("POST", f"/api/v1/nodes/{node.id}/heartbeat", json={}, token=node.token)
        await plane.call("GET", f"/api/v1/nodes/{node.id}/sync", token=node.token)
        await asyncio.sleep(0.5)
        assert len(inbox.on(FLEET_TOPIC)) == 3
    changes = await plane.push.notifier._store.fleet_changes(after=start, upto=start + 3)
    assert [(c.generation, c.reason, c.node_ids) for c in changes] == [
        (start + 1, "function_uploaded", None),
        (start + 2, "schema_added", None),
        (start + 3, "function_deleted", None),
    ]
    metrics = await plane.metrics()
    assert "edgesync_mqtt_notifications_total 3.0" in metrics
    assert "edgesync_mqtt_clients 0.0" in metrics


class FakePublisher:
    """Records publications; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Notification]] = []
        self.failing = False

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.failing:
            raise PublishFailed("broker down")
        notification = Notification.decode(payload)
        assert notification is not None
        self.sent.append((topic, notification))

    async def close(self) -> None:
        pass


async def add_schema(store: Store, version: int) -> None:
    await store.add_migration(
        MigrationRecord(
            version=version,
            description=f"v{version}",
            up_sql=f"CREATE TABLE t{version} (x INTEGER)",
            down_sql=None,
            checksum=f"{version:064x}",
            created_at=format_time(utcnow()),
        )
    )


async def test_changes_between_two_rounds_make_one_message_per_topic(store: Store) -> None:
    publisher = FakePublisher()
    notifier = Notifier(store, publisher, interval=60)
    await notifier.step()  # the starting point: nothing before it is news
    start = await store.generation()
    for version in (1, 2, 3):
        await add_schema(store, version)
    await notifier.step()
    assert publisher.sent == [(FLEET_TOPIC, Notification("schema_added", f"g{start + 3}"))]
    await notifier.step()
    assert len(publisher.sent) == 1


async def test_node_scoped_changes_go_to_node_topics(store: Store) -> None:
    """Nothing is node-scoped yet; rollouts will record node ids with their bump."""
    publisher = FakePublisher()
    notifier = Notifier(store, publisher, interval=60)
    await notifier.step()
    start = await store.generation()

    async def bump(tx: object) -> None:
        await store._bump_generation(tx, "rollout_step", ["n2", "n1"])  # type: ignore[arg-type]

    await store._write(bump)
    await notifier.step()
    etag = f"g{start + 1}"
    assert sorted(publisher.sent) == [
        (node_topic("n1"), Notification("rollout_step", etag)),
        (node_topic("n2"), Notification("rollout_step", etag)),
    ]


async def test_a_local_write_wakes_the_notifier_at_once(store: Store) -> None:
    publisher = FakePublisher()
    notifier = Notifier(store, publisher, interval=60)  # the timer alone would take a minute
    await notifier.start()
    try:
        await add_schema(store, 1)
        await eventually(lambda: publisher.sent, "the notification", within=5)
    finally:
        await notifier.close()
    assert store._commit_listeners == []  # the notifier unsubscribed


async def test_a_failed_publish_is_retried_with_the_newest_generation(store: Store) -> None:
    publisher = FakePublisher()
    publisher.failing = True
    notifier = Notifier(store, publisher, interval=0.05)
    await notifier.start()
    try:
        start = await store.generation()
        await add_schema(store, 1)
        await eventually(lambda: notifier.stats.failures >= 2, "failed rounds", within=10)
        await add_schema(store, 2)
        publisher.failing = False
        await eventually(lambda: publisher.sent, "the retried notification", within=10)
    finally:
        await notifier.close()
    assert publisher.sent == [(FLEET_TOPIC, Notification("schema_added", f"g{start + 2}"))]


async def test_pruned_or_unrecorded_generations_notify_the_whole_fleet(store: Store) -> None:
    publisher = FakePublisher()
    notifier = Notifier(store, publisher, interval=60)
    await notifier.step()
    start = await store.generation()

    async def bump_without_record(tx: object) -> None:
        await tx.execute("UPDATE fleet_state SET generation = generation + 1 WHERE id = 1")  # type: ignore[attr-defined]

    await store._write(bump_without_record)
    await notifier.step()
    assert publisher.sent == [(FLEET_TOPIC, Notification("changed", f"g{start + 1}"))]


async def test_an_unreachable_external_broker_never_breaks_a_request(
    make_plane: PlaneFactory,
) -> None:
    """External mode with the broker down: uploads succeed at once; once the broker is
    reachable the pending notification goes out (newest generation)."""
    async with anonymous_broker() as broker_port:
        gate = await Gate(broker_port).start(is_open=False)
        try:
            plane = await make_plane(mqtt_enabled=None, mqtt_broker=gate.url)
            assert plane.push.embedded is None
            node = await plane.register()
            assert node.mqtt == {"url": gate.url, "topics": [node_topic(node.id), FLEET_TOPIC]}
            started = time.monotonic()
            await plane.upload("hello", "1.0.0")
            await plane.upload("hello", "1.0.1", tag=1)
            assert time.monotonic() - started < 5  # no request waited for the broker
            await eventually(lambda: plane.push.notifier.stats.failures >= 1, "a failed round")
            generation = await plane.push.notifier._store.generation()
            async with mqtt_client(broker_port) as (client, inbox):
                assert await suback(client, FLEET_TOPIC) == 0
                await gate.open()
                await inbox.wait_for(FLEET_TOPIC, f"g{generation}")
                assert inbox.on(FLEET_TOPIC) == [
                    Notification("function_uploaded", f"g{generation}")
                ]
                # The broker goes away again mid-run, and comes back.
                failures = plane.push.notifier.stats.failures
                await gate.shut()
                await plane.upload("hello", "1.0.2", tag=2)
                await eventually(
                    lambda: plane.push.notifier.stats.failures > failures, "a failed round"
                )
                await gate.open()
                await inbox.wait_for(FLEET_TOPIC, f"g{generation + 1}")
        finally:
            await gate.close()


async def test_the_external_broker_gets_credentials_from_the_url(
    make_plane: PlaneFactory,
) -> None:
    """user:password in --mqtt-broker reach the broker, and never the nodes."""
    async with anonymous_broker() as broker_port:
        url = f"mqtt://publisher:s3cret%40x@127.0.0.1:{broker_port}"
        plane = await make_plane(mqtt_broker=url)
        node = await plane.register()
        assert node.mqtt is not None
        assert node.mqtt["url"] == f"mqtt://127.0.0.1:{broker_port}"
        address = plane.push.publisher.address  # type: ignore[attr-defined]
        assert (address.username, address.password) == ("publisher", "s3cret@x")
        assert "s3cret" not in repr(plane.push.config) and "s3cret" not in repr(address)
        async with mqtt_client(broker_port) as (client, inbox):
            assert await suback(client, FLEET_TOPIC) == 0
            await plane.upload("hello", "1.0.0")
            await inbox.wait_for(FLEET_TOPIC)


async def test_what_registration_tells_nodes(make_plane: PlaneFactory) -> None:
    off = await make_plane(mqtt_enabled=False)
    assert (await off.register()).mqtt is None

    derived = await make_plane(public_url="https://cp.example.com:8443/base")
    node = await derived.register()
    assert node.mqtt == {
        "url": f"mqtt://cp.example.com:{derived.mqtt_port}",
        "topics": [f"edgesync/nodes/{node.id}/notify", "edgesync/fleet/notify"],
    }
    told = await make_plane(mqtt_public_url="mqtts://mqtt.example.com")
    assert (await told.register()).mqtt["url"] == "mqtts://mqtt.example.com:8883"  # type: ignore[index]

    from_request = await make_plane()  # no public URL: the host the node used
    assert (await from_request.register()).mqtt["url"] == (  # type: ignore[index]
        f"mqtt://127.0.0.1:{from_request.mqtt_port}"
    )


async def test_the_embedded_broker_needs_a_free_port(make_plane: PlaneFactory) -> None:
    taken = await make_plane()
    with pytest.raises(OSError, match="cannot start the MQTT broker"):
        await make_plane(mqtt_listen=f"127.0.0.1:{taken.mqtt_port}")


async def test_the_broker_stops_with_the_app(make_plane: PlaneFactory) -> None:
    plane = await make_plane(mqtt_listen=f"127.0.0.1:{free_port()}")
    port = plane.mqtt_port
    node = await plane.register()
    async with mqtt_client(port, node.id, node.token) as (client, _):
        assert await suback(client, FLEET_TOPIC) == 0
        await plane.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
