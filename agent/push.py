"""MQTT push on the agent: a notification makes the node poll at once.

:class:`PushListener` keeps one MQTT connection (username = node id,
password = the node's *current* token) subscribed to the node's topics, and
on a message calls ``nudge`` (which wakes the agent's loop), debounced: a
burst of messages within ``debounce`` seconds is one nudge. It reconnects on
the agent's retry schedule (0, 1, 2, 4 … s, capped at 60 s) and after a
token rotation. It never replaces polling: the loop keeps its own interval
whether or not the broker is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from agent.backoff import RETRY_CAP_SECONDS, retry_delay
from edgesync.mqtt import BrokerAddress, Notification, parse_broker_url

log = logging.getLogger("edgesync.agent.push")

DEBOUNCE_SECONDS = 0.1
CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 60


class PushListener:
    def __init__(
        self,
        url: str,
        topics: list[str],
        node_id: str,
        token: Callable[[], str],
        nudge: Callable[[], None],
        *,
        ca_file: str | None = None,
        debounce: float = DEBOUNCE_SECONDS,
    ) -> None:
        self.address: BrokerAddress = parse_broker_url(url, "the MQTT URL")
        self.topics = list(topics)
        self.node_id = node_id
        self._token = token
        self._nudge = nudge
        self._ca_file = ca_file
        self.debounce = debounce
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reconnect = asyncio.Event()
        # What tests and `agent status` may look at.
        self.connected = False
        self.connections = 0
        self.messages = 0
        self.nudges = 0
        self.failures = 0

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"edgesync-push-{self.node_id}")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected = False

    def credentials_changed(self) -> None:
        """The node's token was rotated: reconnect with the new one."""
        self._reconnect.set()

    # -- the connection -------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                failures = 0  # a credentials change: reconnect at once
            except Exception as exc:  # MqttError, or anything else: never stop listening
                self.connected = False
                failures += 1
                self.failures += 1
                # Once per outage, like the loop's own "lost the control plane": the
                # retries are DEBUG, the reconnection is INFO ("MQTT push connected").
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "MQTT push unavailable (%s): %s; polling continues",
                    self.address.public_url,
                    exc,
                )
                await asyncio.sleep(self._delay(failures))

    def _delay(self, failures: int) -> float:
        # Jittered, so a fleet does not reconnect in lockstep after a broker restart.
        delay = retry_delay(failures) * random.uniform(0.8, 1.2) + random.uniform(0, 0.5)
        return min(RETRY_CAP_SECONDS, delay)

    async def _session(self) -> None:
        """One connection: subscribe, then read until it drops or the token changes."""
        import aiomqtt

        self._reconnect.clear()
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.node_id,
            password=self._token(),
            # Random: a client id others can guess lets them take the session over.
            identifier=f"edgesync-{self.node_id[:8]}-{secrets.token_hex(6)}",
            clean_session=True,
            keepalive=KEEPALIVE_SECONDS,
            timeout=CONNECT_TIMEOUT,
            tls_context=self._tls_context(),
            logger=logging.getLogger("edgesync.agent.mqtt"),
        )
        async with client:
            granted = await client.subscribe([(topic, 0) for topic in self.topics])
            refused = [t for t, code in zip(self.topics, granted, strict=False) if _failed(code)]
            if len(refused) == len(self.topics):
                raise aiomqtt.MqttError(f"every subscription refused: {refused}")
            if refused:
                log.warning("MQTT subscriptions refused: %s", refused)
            self.connected = True
            self.connections += 1
            log.info("MQTT push connected to %s", self.address.public_url)
            # Whatever was published while we were away is lost: poll once now.
            self._schedule_nudge()
            reader = asyncio.create_task(self._read(client))
            rotated = asyncio.create_task(self._reconnect.wait())
            try:
                await asyncio.wait({reader, rotated}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, rotated):
                    task.cancel()
                await asyncio.gather(reader, rotated, return_exceptions=True)
            self.connected = False
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            log.info("MQTT push reconnecting with the rotated token")

    async def _read(self, client: Any) -> None:
        async for message in client.messages:
            self.messages += 1
            notification = Notification.decode(message.payload)
            log.debug("MQTT %s: %s", message.topic, notification)
            self._schedule_nudge()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.address.tls:
            return None
        return ssl.create_default_context(cafile=self._ca_file)

    # -- nudging --------------------------------------------------------------------

    def _schedule_nudge(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.nudges += 1
        self._nudge()


def _failed(code: Any) -> bool:
    """A SUBACK return code of 0x80 or more (MQTT 3.1.1: 0x80 = failure)."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80
