"""The agent's MQTT push: fast convergence, and polling that never depends on the broker.

Real in-process agents (``Agent.run`` on the real clock, wasmtime, no gateway)
against a real control plane whose embedded broker sits behind a :class:`Gate`
(a TCP port the test opens and shuts: a broker that is down, dies, returns).
Nodes are told the gate's URL with ``--mqtt-public-url``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mqtt_support import (
    NOT_AUTHORIZED,
    PUSH_BOUND,
    SLOW_POLL,
    Gate,
    Plane,
    PlaneFactory,
    ShiftedClock,
    converge_time,
    eventually,
    login_refusal,
    mqtt_client,
    running_agent,
    suback,
)

from agent.main import push_listener
from agent.push import PushListener
from edgesync.mqtt import Notification, node_topic


async def test_a_notification_makes_a_slow_poller_converge_at_once(
    plane: Plane, tmp_path: Path
) -> None:
    token = await plane.enrollment_token()
    async with running_agent(
        plane.url, tmp_path / "edge", token, poll_interval_seconds=SLOW_POLL
    ) as running:
        assert running.push is not None
        assert running.push.address.port == plane.mqtt_port
        await eventually(lambda: running.push and running.push.connected, "the MQTT login")
        await running.settle()
        assert await converge_time(plane, running, "hello", "1.0.0") < PUSH_BOUND
        await running.settle()
        assert await converge_time(plane, running, "hello", "1.0.1") < PUSH_BOUND
        # Two releases, a handful of syncs: push does not turn into busy polling.
        assert len(running.syncs) <= 8, running.syncs


async def test_the_broker_down_at_start_costs_nothing_but_push(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    gate = Gate(0)
    plane = await make_plane(mqtt_public_url=gate.url)
    gate.target = ("127.0.0.1", plane.mqtt_port)
    token = await plane.enrollment_token()
    try:
        async with running_agent(
            plane.url, tmp_path / "edge", token, poll_interval_seconds=0.5
        ) as running:
            push = running.push
            assert push is not None and push.address.port == gate.port
            # Down: the agent polls and converges as if MQTT did not exist.
            await converge_time(plane, running, "hello", "1.0.0")
            await eventually(lambda: push.failures >= 2, "failed MQTT logins")
            assert not push.connected
            # Up: it logs in (on its retry schedule), and push works.
            await gate.open()
            await eventually(lambda: push.connected, "the MQTT login once the broker is up")
            running.set_poll_interval(SLOW_POLL)
            await running.settle()
            assert await converge_time(plane, running, "hello", "1.0.1") < PUSH_BOUND
    finally:
        await gate.close()


async def test_the_broker_dying_mid_run_costs_nothing_but_push(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    gate = Gate(0)
    plane = await make_plane(mqtt_public_url=gate.url)
    gate.target = ("127.0.0.1", plane.mqtt_port)
    await gate.open()
    token = await plane.enrollment_token()
    try:
        async with running_agent(
            plane.url, tmp_path / "edge", token, poll_interval_seconds=1.0
        ) as running:
            push = running.push
            assert push is not None
            await eventually(lambda: push.connected, "the MQTT login")
            # The broker dies: the agent notices, and keeps converging by polling.
            await gate.shut()
            await eventually(lambda: not push.connected, "the lost connection")
            await converge_time(plane, running, "hello", "1.0.0")
            await converge_time(plane, running, "hello", "1.0.1")
            # It comes back: the agent logs in again and push works again.
            await gate.open()
            await eventually(lambda: push.connected and push.connections >= 2, "the re-login")
            running.set_poll_interval(SLOW_POLL)
            await running.settle()
            assert await converge_time(plane, running, "hello", "1.0.2") < PUSH_BOUND
    finally:
        await gate.close()


async def test_after_a_token_rotation_the_agent_logs_in_with_the_new_token(
    plane: Plane, tmp_path: Path
) -> None:
    token = await plane.enrollment_token()
    # 70 days into a 90-day token: the first sync rotates it.
    clock = ShiftedClock(offset=70 * 86400)
    async with running_agent(
        plane.url, tmp_path / "edge", token, poll_interval_seconds=SLOW_POLL, clock=clock
    ) as running:
        push = running.push
        assert push is not None and running.agent.credentials is not None
        credentials = running.agent.credentials
        first = credentials.token
        await eventually(lambda: credentials.token != first, "the token rotation")
        clock.offset = 0  # the new token is young: no more rotations

        def logged_in_with_the_current_token() -> bool:
            # The broker's own view: the node's connected session and its password.
            assert plane.push.embedded is not None
            sessions = [
                session
                for session, _ in plane.push.embedded._broker.sessions.values()
                if session.username == running.node_id and session.transitions.state == "connected"
            ]
            return push.connected and [s.password for s in sessions] == [credentials.token]

        await eventually(logged_in_with_the_current_token, "the re-login with the new token")
        # The old token no longer opens the broker; the listener's connection is the new one.
        assert await login_refusal(plane.mqtt_port, running.node_id, first) == NOT_AUTHORIZED
        await running.settle()
        assert await converge_time(plane, running, "hello", "1.0.0") < PUSH_BOUND


async def test_a_burst_of_notifications_is_one_nudge(plane: Plane) -> None:
    node = await plane.register()
    nudges: list[float] = []
    listener = PushListener(
        f"mqtt://127.0.0.1:{plane.mqtt_port}",
        [node_topic(node.id)],
        node.id,
        token=lambda: node.token,
        nudge=lambda: nudges.append(time.monotonic()),
        debounce=0.2,
    )
    listener.start()
    try:
        await eventually(lambda: nudges, "the nudge that follows the login")
        for i in range(20):
            await plane.push.publisher.publish(
                node_topic(node.id), Notification("burst", f"g{i}").encode()
            )
        await eventually(lambda: listener.messages == 20, "20 messages")
        await asyncio.sleep(0.5)
        assert len(nudges) == 2, nudges
    finally:
        await listener.stop()
    assert not listener.connected


async def test_a_refused_login_is_retried_on_the_backoff_schedule(plane: Plane) -> None:
    node = await plane.register()
    listener = PushListener(
        f"mqtt://127.0.0.1:{plane.mqtt_port}",
        [node_topic(node.id)],
        node.id,
        token=lambda: "not-a-token",
        nudge=lambda: None,
    )
    listener.start()
    try:
        await eventually(lambda: listener.failures >= 3, "three refused logins")
        assert not listener.connected
    finally:
        await listener.stop()
    # Retry delays: 0, 1, 2, 4 ... s (jittered, capped at 60 s).
    delays = [listener._delay(n) for n in range(1, 12)]
    assert delays[0] <= 0.5 and 0.8 <= delays[1] <= 1.7 and 1.6 <= delays[2] <= 2.9
    assert max(delays) <= 60 and delays[-1] >= 48


async def test_the_listener_is_wired_from_the_registration(plane: Plane, tmp_path: Path) -> None:
    from mqtt_support import open_agent

    token = await plane.enrollment_token(max_uses=3)
    agent = await open_agent(plane.url, tmp_path / "a", token)
    try:
        told = push_listener(agent.config, agent)
        assert told is not None
        assert told.topics == [node_topic(agent.node_id), "edgesync/fleet/notify"]
        assert told.address.port == plane.mqtt_port
        agent.config.mqtt = False
        assert push_listener(agent.config, agent) is None
        agent.config.mqtt = True
        agent.config.mqtt_url = "mqtt://broker.example.com:1884"
        overridden = push_listener(agent.config, agent)
        assert overridden is not None and overridden.address.host == "broker.example.com"
        agent.config.mqtt_url = None
        assert agent.credentials is not None
        agent.credentials.mqtt = {"url": "ws://broker.example.com/mqtt", "topics": []}
        assert push_listener(agent.config, agent) is None  # a scheme it cannot speak
    finally:
        await agent.close()

    no_mqtt = await open_agent(plane.url, tmp_path / "b", token)
    try:
        assert no_mqtt.credentials is not None
        no_mqtt.credentials.mqtt = None  # registered while MQTT was off
        assert push_listener(no_mqtt.config, no_mqtt) is None
    finally:
        await no_mqtt.close()


async def test_a_node_only_hears_its_own_and_the_fleet_topic(plane: Plane) -> None:
    """The agent subscribes to exactly the two topics the registration named."""
    a = await plane.register("a")
    b = await plane.register("b")
    nudges: list[float] = []
    listener = PushListener(
        a.mqtt["url"],  # type: ignore[index]
        a.mqtt["topics"],  # type: ignore[index]
        a.id,
        token=lambda: a.token,
        nudge=lambda: nudges.append(time.monotonic()),
        debounce=0.05,
    )
    listener.start()
    try:
        await eventually(lambda: listener.connected and nudges, "the login")
        async with mqtt_client(plane.mqtt_port, b.id, b.token) as (client, inbox):
            assert await suback(client, node_topic(b.id)) == 0
            await plane.push.publisher.publish(node_topic(b.id), b'{"reason": "b"}')
            await inbox.wait_for(node_topic(b.id))
        await asyncio.sleep(0.3)
        assert listener.messages == 0
        await plane.push.publisher.publish(node_topic(a.id), b'{"reason": "a"}')
        await eventually(lambda: listener.messages == 1, "a's message")
    finally:
        await listener.stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), made with the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_with_tls_the_broker_speaks_mqtts_only(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    """--tls-cert/--tls-key secure the MQTT listener too: tokens never travel in clear."""
    import aiomqtt

    cert, key = self_signed(tmp_path)
    plane = await make_plane(tls_cert=cert, tls_key=key)
    node = await plane.register()
    assert node.mqtt is not None and node.mqtt["url"] == f"mqtts://127.0.0.1:{plane.mqtt_port}"
    with pytest.raises(aiomqtt.MqttError):  # plain MQTT gets nowhere
        async with aiomqtt.Client(
            "127.0.0.1", plane.mqtt_port, username=node.id, password=node.token, timeout=1
        ):
            pass
    nudges: list[float] = []
    listener = PushListener(
        node.mqtt["url"],
        node.mqtt["topics"],
        node.id,
        token=lambda: node.token,
        nudge=lambda: nudges.append(time.monotonic()),
        ca_file=str(cert),
        debounce=0.05,
    )
    listener.start()
    try:
        await eventually(lambda: listener.connected, "the login over TLS")
        await plane.push.publisher.publish(node_topic(node.id), b'{"reason": "tls"}')
        await eventually(lambda: listener.messages == 1, "the message over TLS")
    finally:
        await listener.stop()
