"""MQTT push in the app: the cleanup context, and what registration tells nodes.

``push_ctx`` runs after the services context: it starts the embedded broker
(or the client of an external one) and the notifier, and stops both on
shutdown. With MQTT off it does nothing and registration answers
``"mqtt": null``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from appliance.config import ServeConfig
from appliance.push.broker import EmbeddedBroker, ExternalBroker, Publisher
from appliance.push.notifier import Notifier
from appliance.services import CONFIG, METRICS, SERVICES
from edgesync.mqtt import node_topics, parse_broker_url, parse_listen


@dataclass
class Push:
    config: ServeConfig
    publisher: Publisher
    notifier: Notifier
    embedded: EmbeddedBroker | None

    def public_url(self, request: web.Request) -> str:
        """Where nodes connect: ``--mqtt-public-url``, else derived (docs/mqtt.md)."""
        if self.config.mqtt_public_url:
            return parse_broker_url(self.config.mqtt_public_url).public_url
        if self.embedded is None:
            assert self.config.mqtt_broker
            return parse_broker_url(self.config.mqtt_broker).public_url
        host = None
        if self.config.public_url:
            host = urlsplit(self.config.public_url).hostname
        host = host or request.url.host or "127.0.0.1"
        bracketed = f"[{host}]" if ":" in host else host
        return f"{self.embedded.scheme}://{bracketed}:{self.embedded.port}"

    def registration(self, request: web.Request, node_id: str) -> dict[str, Any]:
        """The registration response's ``mqtt`` object (docs/protocol.md)."""
        return {"url": self.public_url(request), "topics": node_topics(node_id)}


PUSH = web.AppKey("push", Push)


def mqtt_registration(request: web.Request, node_id: str) -> dict[str, Any] | None:
    push = request.app.get(PUSH)
    return push.registration(request, node_id) if push is not None else None


async def push_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    mode = config.mqtt_mode
    if mode is None:
        yield
        return
    svc = app[SERVICES]
    embedded: EmbeddedBroker | None = None
    publisher: Publisher
    if mode == "embedded":
        from appliance.tls import tls_context  # the API's TLS settings, for MQTT too

        host, port = parse_listen(config.mqtt_listen)
        publisher = embedded = EmbeddedBroker(host, port, svc.authority, tls_context(config))
    else:
        assert config.mqtt_broker
        publisher = ExternalBroker(parse_broker_url(config.mqtt_broker))
    await publisher.start()
    try:
        notifier = Notifier(
            svc.store,
            publisher,
            interval=config.mqtt_watch_interval,
            saw_generation=svc.cache.saw_generation,
        )
        await notifier.start()
        try:
            push = Push(config, publisher, notifier, embedded)
            app[PUSH] = push
            collector = _PushCollector(push)
            app[METRICS].registry.register(collector)
            try:
                yield
            finally:
                app[METRICS].registry.unregister(collector)
        finally:
            await notifier.close()
    finally:
        await publisher.close()


class _PushCollector:
    """MQTT figures for ``/metrics``, read from the notifier and the broker when scraped."""

    def __init__(self, push: Push) -> None:
        self._push = push

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._push.notifier.stats
        yield CounterMetricFamily(
            "edgesync_mqtt_notifications",
            "MQTT notifications handed to the broker",
            value=stats.published,
        )
        yield CounterMetricFamily(
            "edgesync_mqtt_notify_failures",
            "Notifier rounds that failed (broker or database unavailable); retried",
            value=stats.failures,
        )
        if self._push.embedded is not None:
            yield GaugeMetricFamily(
                "edgesync_mqtt_clients",
                "Clients connected to the embedded MQTT broker",
                value=self._push.embedded.connected_clients(),
            )
