"""The converged node's poll, answered from memory before the middleware chain.

Most requests a fleet makes are one shape: ``GET /api/v1/nodes/{id}/sync``
with the node's bearer token and the ETag of the plan it holds, answered 304.
When every fact that answer depends on is already in memory (a token verified
before and unexpired, the node's stamp fresh in the ``FleetCache`` naming that
token, its cached plan with exactly that ETag), :meth:`PollFastPath.answer`
replies 304 itself: no logging, error, NUL or auth middleware, no histogram;
a plain counter and the plans-served counter. Anything else (another route,
a query string, an unknown or rotated token, a stale stamp, a different ETag,
malformed liveness headers) returns None and takes the full chain, which
decides the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web

from appliance.auth import Authority
from appliance.fleet_cache import FleetCache
from appliance.liveness import LivenessBuffer
from edgesync.protocol import (
    AGENT_VERSION_HEADER,
    LIVENESS_RECORDED,
    LIVENESS_RECORDED_HEADER,
    STATE_ETAG_HEADER,
)

BEARER_PREFIX = "Bearer "
SYNC_ROUTE = "/api/v1/nodes/{node_id}/sync"
# Printable ASCII, bounded like the heartbeat body's fields.
_AGENT_VERSION_RE = re.compile(r"[\x21-\x7e]{1,100}")
_STATE_ETAG_RE = re.compile(r"[\x21-\x7e]{1,200}")


def liveness_headers(headers: Mapping[str, str]) -> tuple[str | None, str | None] | None:
    """The poll's ``(agent version, state etag)``; None when either header is malformed."""
    version, etag = headers.get(AGENT_VERSION_HEADER), headers.get(STATE_ETAG_HEADER)
    if version is not None and not _AGENT_VERSION_RE.fullmatch(version):
        return None
    if etag is not None and not _STATE_ETAG_RE.fullmatch(etag):
        return None
    return version, etag


class PollFastPath:
    def __init__(
        self,
        authority: Authority,
        cache: FleetCache,
        liveness: LivenessBuffer,
    ) -> None:
        self._authority = authority
        self._cache = cache
        self._liveness = liveness
        # A plain int (no lock, no label lookup): moved into edgesync_plans_served
        # {kind="not_modified"} and exported as edgesync_polls_fast_path on scrape.
        self.served = 0

    def answer(self, request: web.Request) -> web.Response | None:
        """The 304 for a converged node's poll, or None: take the full chain."""
        if request.method != "GET" or request.query_string:
            return None
        match = request.match_info
        resource = match.route.resource
        if match.http_exception is not None or resource is None:
            return None
        if resource.canonical != SYNC_ROUTE:
            return None
        headers = request.headers
        etag = headers.get("If-None-Match")
        authorization = headers.get("Authorization")
        if not etag or not authorization or not authorization.startswith(BEARER_PREFIX):
            return None
        # Only tokens verified (and so well-formed) before are known here.
        known = self._authority.known_node_token(authorization[len(BEARER_PREFIX) :])
        if known is None or match.get("node_id") != known[0]:
            return None
        stamp = self._cache.cached_stamp(known[0])
        if stamp is None or stamp.token_jti != known[1]:
            return None
        plan = self._cache.cached_plan(stamp)
        if plan is None or plan.etag != etag:  # exactly the agent's form; lists go slow
            return None
        facts = liveness_headers(headers)
        if facts is None:
            return None
        self._liveness.seen(stamp.node_id, stamp.poll_interval_seconds, *facts)
        self.served += 1
        return web.Response(
            status=304, headers={"ETag": plan.etag, LIVENESS_RECORDED_HEADER: LIVENESS_RECORDED}
        )
