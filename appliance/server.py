"""Running the control plane: ``run(config)`` serves ``make_app(config)`` until signalled."""

from __future__ import annotations

import logging
import socket
import ssl

from aiohttp import web

from appliance.app import make_app
from appliance.artifacts.base import ArtifactStoreUnavailable
from appliance.config import ServeConfig
from appliance.store.db import DatabaseError
from appliance.tls import tls_context
from edgesync.errors import EdgesyncError
from edgesync.http_server import ReadDeadlines, run_app
from edgesync.listen import bound_port, reserve_tcp

log = logging.getLogger("edgesync.serve")


def claim_ports(config: ServeConfig) -> list[socket.socket]:
    """Reserve every port serve will listen on, before anything is written.

    A busy port must fail the start while there is still no data dir, admin token
    or database; the reservations keep the ports until the server has bound them.
    """
    claimed = reserve_tcp(config.host, config.port, what="serve the API")
    try:
        if config.mqtt_mode == "embedded":
            from edgesync.mqtt import parse_listen

            host, port = parse_listen(config.mqtt_listen, "--mqtt-listen")
            claimed += reserve_tcp(host, port, what="run the MQTT broker")
    except BaseException:
        for sock in claimed:
            sock.close()
        raise
    return claimed


def run(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM; aiohttp then runs every cleanup context.

    Order: TLS files and ports first (nothing written yet), then the app's cleanup
    contexts (the data-dir lock first of all), and only then the URL is announced.
    """
    context = tls_context(config)
    claimed = claim_ports(config)
    try:
        _serve(config, context, bound_port(claimed))
    finally:
        for sock in claimed:
            sock.close()


def _serve(config: ServeConfig, context: ssl.SSLContext | None, port: int) -> None:
    app = make_app(config)
    scheme = "https" if context is not None else "http"

    async def announce(_app: web.Application) -> None:
        # After the lock and the store: a server that cannot start never claims a URL.
        log.info(
            "edgesync serve on %s://%s:%s (data dir %s)",
            scheme,
            config.host,
            port,
            config.data_dir,
        )

    app.on_startup.append(announce)
    try:
        # web.run_app, but parse errors get the envelope and slow clients a deadline.
        run_app(
            app,
            host=config.host,
            port=port,
            ssl_context=context,
            deadlines=ReadDeadlines(
                header_seconds=config.header_timeout_seconds,
                body_seconds=config.body_timeout_seconds,
                body_min_rate=config.body_min_rate,
                keepalive_seconds=config.keepalive_seconds,
            ),
            shutdown_timeout=10,
        )
    except DatabaseError as exc:
        # At startup (open, migrate): one line for the operator, not a traceback.
        # The messages name host and user at most, never the URL's password.
        raise EdgesyncError(f"metadata database: {exc}", code="DATABASE_UNAVAILABLE") from exc
    except ArtifactStoreUnavailable as exc:
        # Its message names the store without the secret key.
        raise EdgesyncError(str(exc), code="ARTIFACT_STORE_UNAVAILABLE") from exc
