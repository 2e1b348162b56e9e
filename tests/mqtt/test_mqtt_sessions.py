"""A CONNECT is authenticated before it touches any session (over TCP, real clients).

amqtt on its own deletes (clean session) or takes over (persistent session) the
session of a CONNECT's client id before it checks the login: anyone who could
reach the port and knew a node's client id could drop that node's
subscriptions. Each test has a node connected and subscribed, lets someone else
CONNECT with its client id, and then checks the node still gets its messages on
the connection it had.
"""

from __future__ import annotations

import pytest
from mqtt_support import NOT_AUTHORIZED, Inbox, Node, Plane, mqtt_client, raw_connack, suback

from edgesync.mqtt import Notification, node_topic

IDENTIFIER_REJECTED = 2  # CONNACK return code (MQTT 3.1.1 §3.2.2.3)


async def still_notified(plane: Plane, node: Node, inbox: Inbox, reason: str) -> None:
    await plane.push.publisher.publish(node_topic(node.id), Notification(reason, "g0").encode())
    await inbox.wait_for(node_topic(node.id))
    assert reason in [n.reason for n in inbox.on(node_topic(node.id))]


@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
@pytest.mark.parametrize(
    "who", ["anonymous", "wrong token", "rotated-away token", "the node id with no password"]
)
async def test_a_refused_login_leaves_the_session_of_its_client_id_alone(
    plane: Plane, who: str, clean_session: bool
) -> None:
    node = await plane.register()
    client_id = f"edgesync-{node.id[:8]}-victim"
    if who == "rotated-away token":
        old_token = node.token
        node = await plane.rotate(node)
        credentials: tuple[str | None, str | None] = (node.id, old_token)
    else:
        credentials = {
            "anonymous": (None, None),
            "wrong token": (node.id, node.token[:-4] + "AAAA"),
            "the node id with no password": (node.id, None),
        }[who]
    async with mqtt_client(plane.mqtt_port, node.id, node.token, identifier=client_id) as (
        client,
        inbox,
    ):
        assert await suback(client, node_topic(node.id)) == 0
        code = await raw_connack(
            plane.mqtt_port, *credentials, client_id=client_id, clean_session=clean_session
        )
        assert code == NOT_AUTHORIZED
        await still_notified(plane, node, inbox, "after_the_intruder")


async def test_another_node_cannot_take_over_a_client_id(plane: Plane) -> None:
    victim = await plane.register("victim")
    other = await plane.register("other")
    client_id = f"edgesync-{victim.id[:8]}-victim"
    async with mqtt_client(plane.mqtt_port, victim.id, victim.token, identifier=client_id) as (
        client,
        inbox,
    ):
        assert await suback(client, node_topic(victim.id)) == 0
        for clean_session in (True, False):
            code = await raw_connack(
                plane.mqtt_port,
                other.id,
                other.token,
                client_id=client_id,
                clean_session=clean_session,
            )
            assert code == IDENTIFIER_REJECTED
        await still_notified(plane, victim, inbox, "after_the_other_node")


async def test_a_node_may_still_reconnect_with_its_own_client_id(plane: Plane) -> None:
    node = await plane.register()
    client_id = f"edgesync-{node.id[:8]}-again"
    async with mqtt_client(plane.mqtt_port, node.id, node.token, identifier=client_id) as (
        client,
        _,
    ):
        assert await suback(client, node_topic(node.id)) == 0
    async with mqtt_client(plane.mqtt_port, node.id, node.token, identifier=client_id) as (
        client,
        inbox,
    ):
        assert await suback(client, node_topic(node.id)) == 0
        await still_notified(plane, node, inbox, "reconnected")
