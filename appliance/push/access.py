"""Who may do what on the embedded broker: an amqtt auth and topic plugin.

* Log in: username = node id, password = that node's current token, checked by
  the same :meth:`Authority.authenticate` as an HTTP request (signature, expiry,
  not rotated away). The admin token, anonymous clients and any other pair are
  refused (CONNACK 5, "not authorized").
* Subscribe: exactly ``edgesync/nodes/{own id}/notify`` and
  ``edgesync/fleet/notify``; anything else (another node's topic, a wildcard,
  ``$SYS``) gets the SUBACK failure code 0x80. The token is checked again at
  each SUBSCRIBE, so a rotated-away token cannot add subscriptions.
* Publish: nothing. amqtt drops a refused PUBLISH without delivering it.
* Receive: only what the node could subscribe to (amqtt asks per delivery).

The control plane's own notifications enter the broker through
``Broker.internal_message_broadcast``: they have no session and are not
subject to this plugin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from appliance.auth import Authority
from edgesync.errors import Unauthorized
from edgesync.mqtt import node_topics

log = logging.getLogger("edgesync.mqtt")


class NodeAccessPlugin(BaseAuthPlugin, BaseTopicPlugin):
    """Authenticates nodes by their token and confines each to its own topics."""

    @dataclass
    class Config:
        # The app's Authority, passed as an object (dacite keeps ``Any`` fields as is).
        authority: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        if not isinstance(self.config.authority, Authority):
            raise TypeError("NodeAccessPlugin needs the app's Authority in its config")
        self._authority: Authority = self.config.authority

    async def authenticate(self, *, session: Session) -> bool | None:
        allowed = await self._is_node(session)
        if not allowed:
            log.info("MQTT login refused (client %r)", session.client_id)
        return allowed

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or topic is None or not session.username:
            return False
        if action == Action.PUBLISH:
            return False
        if topic not in node_topics(session.username):
            return False
        if action == Action.SUBSCRIBE:
            return await self._is_node(session)
        return True

    async def _is_node(self, session: Session) -> bool:
        """The session's username is a node id and its password that node's current token."""
        username, password = session.username, session.password
        if not isinstance(username, str) or not isinstance(password, str):
            return False
        if not username or not password:
            return False
        try:
            principal = await self._authority.authenticate(f"Bearer {password}")
        except Unauthorized:
            return False  # invalid, expired or rotated away
        except Exception as exc:  # the database is unreachable: refuse, the node retries
            log.warning("MQTT credentials not checkable: %s", type(exc).__name__)
            return False
        return principal.kind == "node" and principal.node_id == username
