"""amqtt's broker, changed so that a CONNECT is authenticated before it touches a session.

amqtt 0.12 (``Broker._initialize_client_session``) acts on a CONNECT's client id
before any plugin has looked at its credentials: a clean-session CONNECT
deletes the session of that id (and with it a connected node's subscriptions),
and a persistent one overwrites the live session's credentials and takes its
connection over. Only then does ``_handle_client_session`` ask the auth
plugins, and refuse. Anyone who can reach the port and guess a client id could
cut a node off its notifications.

:func:`auth_first_broker` returns a subclass that reads the CONNECT, asks the
auth plugins first, and refuses with CONNACK 5 without touching any session.
It also keeps a session to the username that made it: an authenticated node
reusing another node's client id is refused with CONNACK 2 (identifier
rejected) instead of taking that node's session over. What follows an accepted
CONNECT is amqtt's own session handling, unchanged.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("edgesync.mqtt")

# CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
IDENTIFIER_REJECTED = 0x02
NOT_AUTHORIZED = 0x05


@functools.cache
def auth_first_broker() -> type[Any]:
    """The broker class (built on first use: amqtt is imported lazily)."""
    from amqtt.broker import Broker
    from amqtt.errors import AMQTTError, MQTTError, NoDataError
    from amqtt.mqtt.connack import ConnackPacket
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.utils import gen_client_id

    class AuthFirstBroker(Broker):  # type: ignore[misc]
        async def _initialize_client_session(
            self, reader: Any, writer: Any, remote_address: str, remote_port: int
        ) -> tuple[Any, Any]:
            try:
                handler, incoming = await BrokerProtocolHandler.init_from_connect(
                    reader, writer, self.plugins_manager
                )
            except MQTTError:
                await writer.close()
                raise
            except NoDataError as exc:  # closed before a whole CONNECT arrived
                raise AMQTTError(exc) from exc
            if not await self._authenticate(incoming, None):
                await _refuse(writer, NOT_AUTHORIZED)
                raise AMQTTError(f"CONNECT of client {incoming.client_id!r} not authorized")
            existing = self._sessions.get(incoming.client_id) if incoming.client_id else None
            if existing is not None and existing[0].username != incoming.username:
                await _refuse(writer, IDENTIFIER_REJECTED)
                raise AMQTTError(f"client id {incoming.client_id!r} belongs to another login")
            return handler, await self._adopt(incoming)

        async def _adopt(self, incoming: Any) -> Any:
            """amqtt's session handling for an accepted CONNECT (as in 0.12)."""
            session = incoming
            if incoming.clean_session:
                if incoming.client_id:
                    await self._delete_session(incoming.client_id)
                else:
                    incoming.client_id = gen_client_id()
                incoming.parent = 0
            elif incoming.client_id in self._sessions:
                # The new connection brings its own will, keep-alive and credentials.
                session, _ = self._sessions[incoming.client_id]
                for name in (
                    "will_flag",
                    "will_message",
                    "will_topic",
                    "will_qos",
                    "keep_alive",
                    "username",
                    "password",
                ):
                    setattr(session, name, getattr(incoming, name))
                session.parent = 1
            else:
                incoming.parent = 0
            delay = self.config.get("timeout-disconnect-delay", 0)
            if session.keep_alive > 0 and isinstance(delay, int):
                session.keep_alive += delay
            return session

    async def _refuse(writer: Any, code: int) -> None:
        try:
            await ConnackPacket.build(0, code).to_stream(writer)
        finally:
            await writer.close()

    return AuthFirstBroker
