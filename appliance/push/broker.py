"""Where notifications go: the embedded amqtt broker, or an external broker.

Both are a :class:`Publisher`: ``start()``, ``publish(topic, payload)``,
``close()``. ``publish`` raises :class:`PublishFailed` when the message could
not be handed over; the notifier then keeps it and tries again later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import uuid
from typing import Any, Protocol

from appliance.auth import Authority
from edgesync.mqtt import BrokerAddress

log = logging.getLogger("edgesync.mqtt")

PUBLISH_TIMEOUT = 5.0
# A client must have logged in (been answered CONNACK) this soon after connecting:
# unauthenticated connections must not pile up.
CONNECT_TIMEOUT = 10.0


class PublishFailed(Exception):
    """The broker did not take the message (down, unreachable, refused)."""


class Publisher(Protocol):
    async def start(self) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...

    async def close(self) -> None: ...


class EmbeddedBroker:
    """amqtt's broker in this process, nodes authenticated by :class:`NodeAccessPlugin`.

    The listening socket is ours (amqtt's "external" listener type): we choose
    its TLS settings (the same certificate and TLS 1.3 minimum as the HTTP API
    when ``--tls-cert`` is given: tokens never cross the network in clear when
    the API is encrypted) and know the port it bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        authority: Authority,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self._authority = authority
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self.connect_timeout = CONNECT_TIMEOUT

    @property
    def scheme(self) -> str:
        return "mqtts" if self.ssl_context is not None else "mqtt"

    def broker_config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "external"}},
            # Only our plugin: no anonymous access, no $SYS topics, no packet logging
            # (CONNECT packets carry node tokens).
            "plugins": {
                "appliance.push.access.NodeAccessPlugin": {"authority": self._authority},
            },
        }

    async def start(self) -> None:
        try:
            from amqtt.errors import BrokerError

            from appliance.push.auth_first import auth_first_broker

            broker_class = auth_first_broker()
        except ImportError as exc:
            raise RuntimeError(
                "the embedded MQTT broker needs amqtt: pip install 'edgesync[mqtt]'"
                " (or publish to an external broker with --mqtt-broker)"
            ) from exc

        # amqtt's Broker asks for the running loop in its constructor: build it here.
        broker = broker_class(self.broker_config())
        try:
            await broker.start()
        except BrokerError as exc:
            raise RuntimeError(f"cannot start the MQTT broker: {exc}") from exc
        self._broker = broker
        try:
            self._server = await asyncio.start_server(
                self._connected,
                self.host,
                self.requested_port,
                ssl=self.ssl_context,
                reuse_address=True,
            )
        except OSError as exc:
            self._broker = None
            await broker.shutdown()
            raise OSError(
                f"cannot start the MQTT broker on {self.host}:{self.requested_port}: {exc}"
            ) from exc
        log.info("MQTT broker listening on %s://%s:%s", self.scheme, self.host, self.port)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from amqtt.adapters import StreamReaderAdapter

        broker = self._broker
        if broker is None:  # shutting down
            writer.close()
            return
        adapter = _answer_tracking_writer()(writer)

        def deadline() -> None:
            if not adapter.answered:  # no CONNACK yet: silent, or stuck mid-CONNECT
                writer.transport.abort()

        timer = asyncio.get_running_loop().call_later(self.connect_timeout, deadline)
        try:
            await broker.external_connected(StreamReaderAdapter(reader), adapter, "default")
        except Exception as exc:  # one client's failure is no server error
            log.debug("MQTT connection ended: %s", exc)
        finally:
            timer.cancel()

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the one the kernel picked for 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    def connected_clients(self) -> int:
        if self._broker is None:
            return 0
        return sum(
            1
            for session, _ in self._broker.sessions.values()
            if session.transitions.state == "connected"
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._broker is None or self._broker.transitions.state != "started":
            raise PublishFailed("the embedded MQTT broker is not running")
        # Through the broker's own queue, as the broker itself: no client session,
        # so the node ACL (which forbids publishing) does not apply.
        await self._broker.internal_message_broadcast(topic, payload)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections; the broker ends the open ones
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
        if server is not None:
            await server.wait_closed()


@functools.cache
def _answer_tracking_writer() -> Any:
    """amqtt's stream writer adapter, remembering whether anything was sent."""
    from amqtt.adapters import StreamWriterAdapter

    class AnswerTrackingWriter(StreamWriterAdapter):
        answered = False

        def write(self, data: bytes) -> None:
            self.answered = True
            super().write(data)

    return AnswerTrackingWriter


class ExternalBroker:
    """A client of an external broker (Mosquitto, EMQX), connected on first use.

    A watcher notices a dropped connection at once; a publish on a connection
    that died unnoticed fails (QoS 1: the broker must acknowledge). Either way
    the next publish connects again.
    """

    def __init__(self, address: BrokerAddress) -> None:
        self.address = address
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._identifier = f"edgesync-cp-{uuid.uuid4().hex[:12]}"
        self._warmup: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Connect in the background: serve must come up even when the broker is down.
        self._warmup = asyncio.create_task(self._try_connect(), name="edgesync-mqtt-connect")

    async def _try_connect(self) -> None:
        async with self._lock:
            try:
                await self._connect()
            except PublishFailed as exc:  # not fatal: the notifier retries when it publishes
                log.warning("MQTT broker %s not reachable yet: %s", self.address.public_url, exc)

    async def _connect(self) -> Any:
        import aiomqtt

        if self._client is not None:
            return self._client
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self._identifier,
            tls_params=aiomqtt.TLSParameters() if self.address.tls else None,
            timeout=PUBLISH_TIMEOUT,
            logger=logging.getLogger("edgesync.mqtt.client"),
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise PublishFailed(str(exc)) from exc
        log.info("connected to MQTT broker %s", self.address.public_url)
        self._client = client
        self._watch = asyncio.create_task(self._watch_connection(client))
        return client

    async def _watch_connection(self, client: Any) -> None:
        import aiomqtt

        try:
            async for _ in client.messages:  # nothing is subscribed: this waits for the end
                pass
        except aiomqtt.MqttError as exc:
            log.warning("lost the MQTT broker %s: %s", self.address.public_url, exc)
        if self._client is client:
            self._client = None

    async def publish(self, topic: str, payload: bytes) -> None:
        import aiomqtt

        async with self._lock:
            client = await self._connect()
            try:
                await client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT)
            except aiomqtt.MqttError as exc:
                await self._drop()
                raise PublishFailed(str(exc)) from exc

    async def _drop(self) -> None:
        client, self._client = self._client, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except Exception as exc:  # already broken: nothing more to do
                log.debug("closing the MQTT client: %s", exc)

    async def close(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        async with self._lock:
            await self._drop()
