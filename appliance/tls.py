"""The control plane's TLS settings, shared by the API and the embedded MQTT broker.

TLS 1.3 is the minimum on both listeners: node tokens (the broker's passwords too)
never cross the network under an older protocol.
"""

from __future__ import annotations

import ssl

from appliance.config import ServeConfig
from edgesync.errors import EdgesyncError
from edgesync.neterrors import file_problem


def tls_context(config: ServeConfig) -> ssl.SSLContext | None:
    """The server context for ``--tls-cert/--tls-key``, or None when serving plain HTTP."""
    if not config.tls_cert or not config.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except OSError as exc:  # ssl.SSLError is one
        raise EdgesyncError(
            f"cannot use --tls-cert {config.tls_cert} with --tls-key {config.tls_key}:"
            f" {file_problem(exc)}",
            code="BAD_TLS_FILES",
        ) from exc
    return context
