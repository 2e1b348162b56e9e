"""MQTT push, the part both sides share: topics, the notification, broker URLs.

The control plane publishes a :class:`Notification` to the topics a change
affects; an agent that receives one polls at once. The message is a hint, not
state: it carries no secrets and an agent that misses it still converges on
its next poll (docs/protocol.md, "MQTT").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

FLEET_TOPIC = "edgesync/fleet/notify"
NODE_TOPIC = "edgesync/nodes/{node_id}/notify"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def node_topic(node_id: str) -> str:
    return NODE_TOPIC.format(node_id=node_id)


def node_topics(node_id: str) -> list[str]:
    """Every topic node ``node_id`` may (and does) subscribe to."""
    return [node_topic(node_id), FLEET_TOPIC]


@dataclass(frozen=True)
class Notification:
    """``{"reason": "...", "etag": "..."}``: why the plan changed, and the fleet generation."""

    reason: str
    etag: str

    def encode(self) -> bytes:
        return json.dumps({"reason": self.reason, "etag": self.etag}).encode()

    @classmethod
    def decode(cls, payload: bytes | bytearray | str) -> Notification | None:
        """The notification in ``payload``, or None when it is not one (it is only a hint)."""
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict):
            return None
        return cls(str(body.get("reason", "")), str(body.get("etag", "")))


@dataclass(frozen=True)
class BrokerAddress:
    """A broker named by ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS)."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @property
    def public_url(self) -> str:
        """The URL without credentials: what may be logged or told to nodes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:  # never the password
        return f"BrokerAddress({self.public_url!r}, username={self.username!r})"


def parse_broker_url(url: str, what: str = "MQTT broker URL") -> BrokerAddress:
    """Parse ``mqtt://``, ``mqtts://`` (or a bare ``host[:port]``); ValueError names ``what``."""
    text = url.strip()
    if "://" not in text:
        text = f"mqtt://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} {_safe(url)!r} is not a valid URL: {exc}") from None
    scheme = {"tcp": "mqtt", "ssl": "mqtts"}.get(parts.scheme, parts.scheme)
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{what} must start with mqtt:// or mqtts://, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError(f"{what} {_safe(url)!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{what} {_safe(url)!r} must not have a path or query")
    return BrokerAddress(
        scheme,
        parts.hostname,
        port if port is not None else DEFAULT_PORTS[scheme],
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def parse_listen(value: str, what: str = "--mqtt-listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:1883`` for IPv6) as ``(host, port)``; port 0 picks a free one."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT, not {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)


def _safe(url: str) -> str:
    """``url`` with any password masked, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
