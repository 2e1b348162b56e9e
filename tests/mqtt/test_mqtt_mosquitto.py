"""Interop with Mosquitto (127.0.0.1:1883, anonymous): the external-broker mode.

Mosquitto is shared by every test run on the machine, and the topics are fixed
by docs/protocol.md: other runs may publish on ``edgesync/fleet/notify`` at any time.
So these tests assert what only this run can cause (a message on a topic named
after a fresh node id, a node of this run converging), never that nothing else
arrived. Without Mosquitto they skip, and fail under CI=true.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from mqtt_support import (
    MOSQUITTO,
    PUSH_BOUND,
    SLOW_POLL,
    PlaneFactory,
    converge_time,
    eventually,
    mosquitto_or_skip,
    mqtt_client,
    running_agent,
    suback,
)

from agent.push import PushListener
from edgesync.mqtt import FLEET_TOPIC, Notification, node_topic

MOSQUITTO_URL = f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"


@pytest.fixture(autouse=True)
def _mosquitto() -> None:
    mosquitto_or_skip()


async def test_the_control_plane_publishes_to_mosquitto(make_plane: PlaneFactory) -> None:
    plane = await make_plane(mqtt_broker=MOSQUITTO_URL)
    node = await plane.register()
    assert node.mqtt == {"url": MOSQUITTO_URL, "topics": [node_topic(node.id), FLEET_TOPIC]}
    store = plane.push.notifier._store
    scoped = str(uuid.uuid4())  # a node id no other run uses
    async with mqtt_client(MOSQUITTO[1]) as (client, inbox):
        assert await suback(client, FLEET_TOPIC) == 0
        assert await suback(client, node_topic(scoped)) == 0
        await plane.upload("hello", "1.0.0")
        generation = await store.generation()
        await inbox.wait_for(FLEET_TOPIC, f"g{generation}")
        assert Notification("function_uploaded", f"g{generation}") in inbox.on(FLEET_TOPIC)

        async def bump(tx: object) -> None:
            await store._bump_generation(tx, "rollout_step", [scoped])  # type: ignore[arg-type]

        await store._write(bump)
        await inbox.wait_for(node_topic(scoped), f"g{generation + 1}")
        assert inbox.on(node_topic(scoped)) == [Notification("rollout_step", f"g{generation + 1}")]


async def test_the_agent_listens_on_mosquitto() -> None:
    node_id = str(uuid.uuid4())
    nudges: list[float] = []
    listener = PushListener(
        MOSQUITTO_URL,
        [node_topic(node_id), FLEET_TOPIC],
        node_id,
        token=lambda: "ignored-by-an-anonymous-broker",
        nudge=lambda: nudges.append(time.monotonic()),
        debounce=0.05,
    )
    listener.start()
    try:
        await eventually(lambda: listener.connected and nudges, "the login and its nudge")
        before = len(nudges)
        async with mqtt_client(MOSQUITTO[1]) as (client, _):
            await client.publish(node_topic(node_id), Notification("test", "g1").encode(), qos=1)
        await eventually(lambda: len(nudges) > before, "the nudge of our message")
        assert listener.messages >= 1
    finally:
        await listener.stop()


async def test_a_fleet_on_mosquitto_converges_by_push(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    """Both directions at once: the control plane publishes to Mosquitto, and an agent
    polling every 30 s hears it there and converges within seconds."""
    plane = await make_plane(mqtt_broker=MOSQUITTO_URL, mqtt_public_url=MOSQUITTO_URL)
    token = await plane.enrollment_token()
    async with running_agent(
        plane.url, tmp_path / "edge", token, poll_interval_seconds=SLOW_POLL
    ) as running:
        assert running.push is not None and running.push.address.port == MOSQUITTO[1]
        await eventually(lambda: running.push and running.push.connected, "the MQTT login")
        await running.settle()
        assert await converge_time(plane, running, "hello", "1.0.0") < PUSH_BOUND
