"""Helpers of the MQTT tests: a control plane with MQTT on loopback, MQTT clients, agents.

Everything runs on 127.0.0.1 with ports the kernel picks (the embedded broker
listens on ``127.0.0.1:0``; its port is read back from the app). Waits are
bounded by :data:`WAIT` and are never assertions about speed, except where a
test is about latency and says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import wasmtime
from aiohttp import web

from agent.backoff import RealClock
from agent.config import AgentConfig
from agent.loop import Agent
from agent.main import push_listener
from agent.push import PushListener
from agent.runtime import open_runtime
from appliance.app import make_app
from appliance.config import ServeConfig
from appliance.push.service import PUSH, Push
from edgesync.mqtt import Notification

ADMIN_TOKEN = "mqtt-tests-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WAIT = 30.0
MOSQUITTO = ("127.0.0.1", 1883)
NOT_AUTHORIZED = 5  # CONNACK return code (MQTT 3.1.1 §3.2.2.3)
SUBACK_FAILURE = 0x80  # SUBACK return code (MQTT 3.1.1 §3.9.3)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def module(tag: int) -> bytes:
    """A small valid WASI command module; ``tag`` makes the bytes distinct."""
    wat = f'(module (func (export "_start")) (global (export "tag") i32 (i32.const {tag})))'
    return bytes(wasmtime.wat2wasm(wat))


async def eventually(
    probe: Callable[[], Any], what: str, within: float = WAIT, interval: float = 0.02
) -> Any:
    """Call ``probe`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = probe()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


# -- the control plane -----------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    id: str
    token: str
    mqtt: dict[str, Any] | None


class Plane:
    """``make_app`` served by this event loop on 127.0.0.1, plus the operator's requests."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.data_dir = data_dir
        self.overrides = overrides
        self.port = 0
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def push(self) -> Push:
        assert self.app is not None
        return self.app[PUSH]

    @property
    def mqtt_port(self) -> int:
        assert self.push.embedded is not None
        return self.push.embedded.port

    async def start(self) -> Plane:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": self.data_dir,
            "admin_token": ADMIN_TOKEN,
            "bcrypt_rounds": 4,
            "access_log": False,
            "mqtt_enabled": True,
            "mqtt_listen": "127.0.0.1:0",
            "mqtt_watch_interval": 0.2,
            **self.overrides,
        }
        app = make_app(ServeConfig(**settings))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner, self.app = runner, app
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        expect: int = 200,
        token: str | None = ADMIN_TOKEN,
        **kw: Any,
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._session.request(
            method, f"{self.url}{path}", headers=headers, **kw
        ) as response:
            raw = await response.read()
            assert response.status == expect, f"{method} {path}: {response.status} {raw[:500]!r}"
        return json.loads(raw) if raw else None

    async def enrollment_token(self, max_uses: int = 1) -> str:
        body = {"max_uses": max_uses, "ttl_seconds": 3600}
        created = await self.call("POST", "/api/v1/enrollment-tokens", expect=201, json=body)
        return str(created["token"])

    async def register(self, name: str = "edge") -> Node:
        body = {"name": name, "enrollment_token": await self.enrollment_token()}
        answer = await self.call(
            "POST", "/api/v1/nodes/register", expect=201, json=body, token=None
        )
        return Node(answer["node_id"], answer["token"], answer["mqtt"])

    async def rotate(self, node: Node) -> Node:
        answer = await self.call(
            "POST", f"/api/v1/nodes/{node.id}/token/rotate", json={}, token=node.token
        )
        return Node(node.id, answer["token"], node.mqtt)

    async def upload(self, name: str, version: str, tag: int = 0) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("name", name)
        form.add_field("version", version)
        form.add_field("module", module(tag), filename="f.wasm", content_type="application/wasm")
        created: dict[str, Any] = await self.call(
            "POST", "/api/v1/functions", expect=201, data=form
        )
        return created

    async def delete_function(self, function_id: str) -> None:
        await self.call("DELETE", f"/api/v1/functions/{function_id}", expect=204)

    async def add_schema(self, version: int, up_sql: str) -> None:
        body = {"version": version, "description": f"v{version}", "up_sql": up_sql}
        await self.call("POST", "/api/v1/schemas", expect=201, json=body)

    async def functions_of(self, node_id: str) -> dict[str, str]:
        node = await self.call("GET", f"/api/v1/nodes/{node_id}")
        return {f["name"]: f["version"] for f in node["functions"]}

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/metrics") as response:
                return await response.text()


PlaneFactory = Callable[..., Awaitable[Plane]]


# -- MQTT clients ----------------------------------------------------------------------


@dataclass
class Inbox:
    """Every message one client received, in order, filled by a background task."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def on(self, topic: str) -> list[Notification]:
        return [
            n
            for t, payload in self.messages
            if t == topic and (n := Notification.decode(payload)) is not None
        ]

    async def wait_for(self, topic: str, etag: str | None = None, within: float = WAIT) -> None:
        def arrived() -> bool:
            return any(etag is None or n.etag == etag for n in self.on(topic))

        await eventually(arrived, f"a message on {topic} (etag {etag})", within)


@asynccontextmanager
async def mqtt_client(
    port: int,
    username: str | None = None,
    password: str | None = None,
    host: str = "127.0.0.1",
    identifier: str | None = None,
) -> AsyncIterator[tuple[aiomqtt.Client, Inbox]]:
    """A connected aiomqtt client and the inbox its messages go to."""
    inbox = Inbox()
    async with aiomqtt.Client(
        host, port, username=username, password=password, timeout=10, identifier=identifier
    ) as client:

        async def read() -> None:
            async for message in client.messages:
                inbox.messages.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]

        reader = asyncio.create_task(read())
        try:
            yield client, inbox
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def suback(client: aiomqtt.Client, topic: str) -> int:
    """The SUBACK return code the broker answered for ``topic``."""
    codes = await client.subscribe(topic)
    code = codes[0]
    return int(getattr(code, "value", code))


async def login_refusal(port: int, username: str | None, password: str | None) -> int:
    """Log in with aiomqtt, then with a raw CONNECT; return the CONNACK return code.

    aiomqtt (paho) reports MQTT 3.1.1 return codes as MQTT 5 reason codes
    (5 becomes 135, "Not authorized"), so the code itself is read off the wire.
    """
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, username=username, password=password, timeout=10
        ):
            pass
    except aiomqtt.MqttCodeError as exc:  # aiomqtt's MqttConnectError
        assert str(exc.rc) == "Not authorized", exc
    else:
        pytest.fail(f"the broker let {username!r} in")
    return await raw_connack(port, username, password)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


async def raw_connack(
    port: int,
    username: str | None,
    password: str | None,
    *,
    client_id: str | None = None,
    clean_session: bool = True,
) -> int:
    """Send one MQTT 3.1.1 CONNECT by hand and return the CONNACK's return code."""
    flags = 0x02 if clean_session else 0x00
    payload = _mqtt_string(client_id or f"raw-{os.urandom(4).hex()}")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += _mqtt_string(password)
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    body = variable + payload
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(bytes([0x10]) + _remaining_length(len(body)) + body)
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), WAIT)
    finally:
        writer.close()
    assert connack[:2] == b"\x20\x02", connack
    return connack[3]


def mosquitto_or_skip() -> None:
    """Mosquitto on 127.0.0.1:1883; missing, it fails under CI and skips elsewhere."""
    try:
        with socket.create_connection(MOSQUITTO, timeout=2):
            return
    except OSError as exc:
        reason = f"no Mosquitto on {MOSQUITTO[0]}:{MOSQUITTO[1]} ({exc})"
    if in_ci():
        pytest.fail(f"CI must test against Mosquitto: {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def anonymous_broker() -> AsyncIterator[int]:
    """A plain amqtt broker that lets anyone in (an "external" broker); yields its port."""
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield int(broker._servers["default"].instance.sockets[0].getsockname()[1])
    finally:
        await broker.shutdown()


class Gate:
    """A TCP port in front of a broker: forwards while open; while shut nothing
    listens there (connections are refused, as by a broker that is down) and the
    connections it forwarded are cut."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def start(self, is_open: bool = False) -> Gate:
        if is_open:
            await self.open()
        return self

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def shut(self) -> None:
        """Stop listening and cut the open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        await self.shut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
            self._links.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


# -- agents ------------------------------------------------------------------------------

# The latency goal of push: a node polling every 30 s converges within a couple of
# seconds. The bound below leaves room for a loaded CI machine.
PUSH_BOUND = 5.0
SLOW_POLL = 30.0


async def converge_time(plane: Plane, running: Running, name: str, version: str) -> float:
    """Upload ``name`` ``version``; seconds until the control plane records the node on it."""
    started = time.monotonic()
    await plane.upload(name, version, tag=zlib.crc32(version.encode()) % 100_000)

    async def on_it() -> bool:
        return (await plane.functions_of(running.node_id)).get(name) == version

    await eventually(on_it, f"{running.node_id} on {name} {version}", interval=0.05)
    return time.monotonic() - started


class ShiftedClock(RealClock):
    """The real clock, ``offset`` seconds ahead for token-expiry checks (sleeps are real)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def time(self) -> float:
        return super().time() + self.offset


@dataclass
class Running:
    """An agent whose ``run()`` loop and push listener run in this event loop."""

    agent: Agent
    push: PushListener | None
    task: asyncio.Task[None]
    syncs: list[float] = field(default_factory=list)  # when each sync started
    in_flight: bool = False
    # The poll interval in force when the last sync ended: the loop's next sleep.
    slept_on: float | None = None

    @property
    def node_id(self) -> str:
        return self.agent.node_id

    def set_poll_interval(self, seconds: float) -> None:
        self.agent.config.poll_interval_seconds = seconds

    async def settle(self) -> None:
        """Wait until no sync is in flight and the loop sleeps for the current poll
        interval: a change made now is not seen by polling for that long."""

        def asleep() -> bool:
            return not self.in_flight and self.slept_on == self.agent.poll_interval

        await eventually(asleep, "the agent asleep on its poll interval")
        await asyncio.sleep(0.3)
        await eventually(asleep, "the agent asleep on its poll interval")


@asynccontextmanager
async def running_agent(
    server: str, data_dir: Path, enrollment_token: str | None = None, **config: Any
) -> AsyncIterator[Running]:
    """``open_agent`` + its push listener (as ``edgesync agent`` wires it) + ``run()``."""
    clock = config.pop("clock", None)
    agent = await open_agent(server, data_dir, enrollment_token, **config)
    if clock is not None:
        agent.clock = clock
    push = push_listener(agent.config, agent)
    running = Running(agent, push, asyncio.create_task(asyncio.sleep(0)))
    original = agent.sync_once

    async def counted() -> Any:
        running.syncs.append(time.monotonic())
        running.in_flight = True
        try:
            return await original()
        finally:
            running.in_flight = False
            running.slept_on = agent.poll_interval

    agent.sync_once = counted  # type: ignore[method-assign]
    if push is not None:
        push.start()
    running.task = asyncio.create_task(agent.run())
    try:
        yield running
    finally:
        agent.stop()
        await asyncio.wait_for(running.task, WAIT)
        if push is not None:
            await push.stop()
        await agent.close()


async def open_agent(
    server: str, data_dir: Path, enrollment_token: str | None = None, **config: Any
) -> Agent:
    """An opened in-process agent on the real clock (wasmtime, no gateway)."""
    settings: dict[str, Any] = {
        "server": server,
        "data_dir": data_dir,
        "name": data_dir.name,
        "runtime": "wasmtime",
        "gateway": None,
        "enrollment_token": enrollment_token,
        **config,
    }
    agent = Agent(AgentConfig(**settings), open_runtime("wasmtime", data_dir), clock=RealClock())
    try:
        await agent.open()
    except BaseException:
        await agent.close()
        raise
    return agent
