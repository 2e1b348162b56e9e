"""Running the control plane: ``run(config)`` serves ``make_app(config)`` until signalled."""

from __future__ import annotations

import logging
import ssl

from appliance.app import make_app
from appliance.config import ServeConfig
from appliance.store.db import DatabaseError
from edgesync.http_server import ReadDeadlines, run_app

log = logging.getLogger("edgesync.serve")


def tls_context(config: ServeConfig) -> ssl.SSLContext | None:
    if not config.tls_cert or not config.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return context


def run(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM; aiohttp then runs every cleanup context."""
    app = make_app(config)
    scheme = "https" if config.tls_cert else "http"
    log.info(
        "edgesync serve on %s://%s:%s (data dir %s)",
        scheme,
        config.host,
        config.port,
        config.data_dir,
    )
    try:
        # web.run_app, but parse errors get the envelope and slow clients a deadline.
        run_app(
            app,
            host=config.host,
            port=config.port,
            ssl_context=tls_context(config),
            deadlines=ReadDeadlines(
                header_seconds=config.header_timeout_seconds,
                body_seconds=config.body_timeout_seconds,
                body_min_rate=config.body_min_rate,
            ),
            shutdown_timeout=10,
        )
    except DatabaseError as exc:
        # At startup (open, migrate): one line for the operator, not a traceback.
        # The messages name host and user at most, never the URL's password.
        raise RuntimeError(f"metadata database: {exc}") from exc
