"""The embedded broker's access rules, checked over TCP with a real MQTT client (aiomqtt).

How amqtt signals refusal: a refused login gets CONNACK return code 5 ("not
authorized") and the connection is closed; a refused subscription gets the
SUBACK return code 0x80 for that topic filter (the connection stays up); a
refused PUBLISH is dropped by the broker without a word (MQTT 3.1.1 has no
negative PUBACK), so the tests check that subscribers never receive it.

Where a test shows that something is *not* delivered, it publishes a barrier
message after the forbidden one, on a topic the client may read, and checks
the inbox once the barrier has arrived (the broker delivers from one queue).
"""

from __future__ import annotations

import asyncio

import pytest
from mqtt_support import (
    ADMIN_TOKEN,
    NOT_AUTHORIZED,
    SUBACK_FAILURE,
    Inbox,
    Node,
    Plane,
    login_refusal,
    mqtt_client,
    suback,
)

from edgesync.mqtt import FLEET_TOPIC, Notification, node_topic

SETTLE = 0.3  # after a barrier: anything forbidden that was going to arrive has arrived


async def publish(plane: Plane, topic: str, reason: str) -> bytes:
    """Publish as the control plane does (inside the broker, no client session)."""
    payload = Notification(reason, "g0").encode()
    await plane.push.publisher.publish(topic, payload)
    return payload


async def barrier(plane: Plane, inbox: Inbox, topic: str) -> None:
    await publish(plane, topic, "barrier")
    await inbox.wait_for(topic)
    await asyncio.sleep(SETTLE)


def reasons(inbox: Inbox) -> list[tuple[str, str]]:
    return [
        (topic, n.reason)
        for topic, payload in inbox.messages
        if (n := Notification.decode(payload)) is not None
    ]


async def test_a_node_logs_in_with_its_token_and_reads_its_two_topics(plane: Plane) -> None:
    node = await plane.register()
    assert node.mqtt == {
        "url": f"mqtt://127.0.0.1:{plane.mqtt_port}",
        "topics": [node_topic(node.id), FLEET_TOPIC],
    }
    async with mqtt_client(plane.mqtt_port, node.id, node.token) as (client, inbox):
        assert await suback(client, node_topic(node.id)) == 0
        assert await suback(client, FLEET_TOPIC) == 0
        created = await plane.upload("hello", "1.0.0")
        await inbox.wait_for(FLEET_TOPIC)
        [message] = inbox.on(FLEET_TOPIC)
        assert message.reason == "function_uploaded"
        generation = await plane.push.notifier._store.generation()
        assert message.etag == f"g{generation}"
        await publish(plane, node_topic(node.id), "node_scoped")
        await inbox.wait_for(node_topic(node.id))
        assert created["name"] == "hello"


@pytest.mark.parametrize(
    "case",
    [
        "anonymous",
        "username without password",
        "wrong token",
        "token of another node",
        "rotated-away token",
        "admin token as a node",
        "admin token as admin",
        "token without its node id",
    ],
)
async def test_logins_that_the_broker_refuses(plane: Plane, case: str) -> None:
    a = await plane.register("a")
    b = await plane.register("b")
    credentials: tuple[str | None, str | None]
    if case == "anonymous":
        credentials = (None, None)
    elif case == "username without password":
        credentials = (a.id, None)
    elif case == "wrong token":
        credentials = (a.id, a.token[:-4] + ("AAAA" if not a.token.endswith("AAAA") else "BBBB"))
    elif case == "token of another node":
        credentials = (a.id, b.token)
    elif case == "rotated-away token":
        await plane.rotate(a)
        credentials = (a.id, a.token)
    elif case == "admin token as a node":
        credentials = (a.id, ADMIN_TOKEN)
    elif case == "admin token as admin":
        credentials = ("admin", ADMIN_TOKEN)
    else:
        credentials = ("", a.token)
    assert await login_refusal(plane.mqtt_port, *credentials) == NOT_AUTHORIZED
    # The broker is still fine for a node with its own, current token.
    assert await logs_in(plane, b)


async def logs_in(plane: Plane, node: Node) -> bool:
    async with mqtt_client(plane.mqtt_port, node.id, node.token) as (client, _):
        return await suback(client, FLEET_TOPIC) == 0


async def test_subscribing_to_another_nodes_topic_is_refused(plane: Plane) -> None:
    a = await plane.register("a")
    b = await plane.register("b")
    async with (
        mqtt_client(plane.mqtt_port, a.id, a.token) as (client_a, inbox_a),
        mqtt_client(plane.mqtt_port, b.id, b.token) as (client_b, inbox_b),
    ):
        assert await suback(client_a, node_topic(b.id)) == SUBACK_FAILURE
        assert await suback(client_a, node_topic(a.id)) == 0
        assert await suback(client_b, node_topic(b.id)) == 0
        await publish(plane, node_topic(b.id), "for b only")
        await inbox_b.wait_for(node_topic(b.id))  # it was published, and b got it
        await barrier(plane, inbox_a, node_topic(a.id))
        assert reasons(inbox_a) == [(node_topic(a.id), "barrier")]


@pytest.mark.parametrize(
    "topic_filter",
    [
        "edgesync/#",
        "edgesync/nodes/+/notify",
        "#",
        "+/fleet/notify",
        "edgesync/fleet/#",
        "$SYS/#",
        "edgesync/fleet/notify/extra",
    ],
)
async def test_wildcards_and_other_topics_are_refused(plane: Plane, topic_filter: str) -> None:
    a = await plane.register("a")
    b = await plane.register("b")
    async with mqtt_client(plane.mqtt_port, a.id, a.token) as (client, inbox):
        assert await suback(client, topic_filter) == SUBACK_FAILURE
        assert await suback(client, node_topic(a.id)) == 0
        await publish(plane, FLEET_TOPIC, "fleet")
        await publish(plane, node_topic(b.id), "for b only")
        await barrier(plane, inbox, node_topic(a.id))
        assert reasons(inbox) == [(node_topic(a.id), "barrier")]


async def test_a_node_cannot_publish(plane: Plane) -> None:
    a = await plane.register("a")
    b = await plane.register("b")
    async with (
        mqtt_client(plane.mqtt_port, a.id, a.token) as (client_a, inbox_a),
        mqtt_client(plane.mqtt_port, b.id, b.token) as (client_b, inbox_b),
    ):
        for client, node in ((client_a, a), (client_b, b)):
            assert await suback(client, node_topic(node.id)) == 0
            assert await suback(client, FLEET_TOPIC) == 0
        forged = Notification("forged by a", "g999").encode()
        for qos in (0, 1):
            for topic in (FLEET_TOPIC, node_topic(b.id), node_topic(a.id)):
                await client_a.publish(topic, forged, qos=qos)
        await barrier(plane, inbox_b, FLEET_TOPIC)
        await inbox_a.wait_for(FLEET_TOPIC)
        for inbox in (inbox_a, inbox_b):
            assert all(payload != forged for _, payload in inbox.messages), inbox.messages
            assert reasons(inbox) == [(FLEET_TOPIC, "barrier")]


async def test_a_rotated_away_token_adds_no_subscription(plane: Plane) -> None:
    node = await plane.register()
    async with mqtt_client(plane.mqtt_port, node.id, node.token) as (client, inbox):
        assert await suback(client, node_topic(node.id)) == 0
        rotated = await plane.rotate(node)
        # The open connection keeps what it has, but its token no longer adds anything.
        assert await suback(client, FLEET_TOPIC) == SUBACK_FAILURE
        await publish(plane, FLEET_TOPIC, "fleet")
        await barrier(plane, inbox, node_topic(node.id))
        assert reasons(inbox) == [(node_topic(node.id), "barrier")]
    assert await login_refusal(plane.mqtt_port, node.id, node.token) == NOT_AUTHORIZED
    assert await logs_in(plane, rotated)


async def test_plugin_refuses_to_start_without_an_authority() -> None:
    """The plugin is the broker's only one: without it nothing could log in safely."""
    from amqtt.broker import Broker
    from amqtt.errors import PluginInitError

    with pytest.raises(PluginInitError):
        Broker({"plugins": {"appliance.push.access.NodeAccessPlugin": {}}})


async def test_a_connection_that_does_not_log_in_is_closed(plane: Plane) -> None:
    """Unauthenticated connections cannot pile up: no CONNECT in time, no connection."""
    assert plane.push.embedded is not None
    plane.push.embedded.connect_timeout = 0.5
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", plane.mqtt_port)
    half_reader, half = await asyncio.open_connection("127.0.0.1", plane.mqtt_port)
    half.write(b"\x10\x40\x00\x04MQ")  # a CONNECT that never ends
    try:
        for reader in (silent_reader, half_reader):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the broker
        node = await plane.register()
        assert await logs_in(plane, node)  # a prompt login is not affected
    finally:
        for writer in (silent, half):
            writer.close()
