"""The agent's side of the wire: registration, heartbeats, plans, acks, downloads."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from agent import __version__ as agent_version
from agent.backoff import DEFAULT_POLL_SECONDS
from edgesync.errors import EdgesyncError
from edgesync.neterrors import answered_error, file_problem, origin, unreachable
from edgesync.protocol import (
    AGENT_VERSION_HEADER,
    LIVENESS_RECORDED,
    LIVENESS_RECORDED_HEADER,
    STATE_ETAG_HEADER,
    Ack,
    NodeState,
    Plan,
)

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=30)
# Everything that means "could not talk to the server" (TimeoutError is an OSError).
NETWORK_ERRORS = (aiohttp.ClientError, OSError)
# Idle connections are kept a little longer than the poll interval's longest
# jittered wait (interval + 10 %, agent.backoff.jittered), so a node keeps one
# connection, and under TLS one handshake, across intervals (aiohttp's default,
# 15 s, would drop it at every interval); and shorter than the server's keep-alive
# (interval x 1.1 + 15 s, at least 75 s: ServeConfig.keepalive_seconds), so the
# server never closes a connection just as the agent reuses it. docs/benchmarks.md.
KEEPALIVE_MARGIN_SECONDS = 10.0


def keepalive_seconds(poll_interval: float) -> float:
    """How long the agent keeps an idle connection when it polls every ``poll_interval`` s."""
    return poll_interval * 1.1 + KEEPALIVE_MARGIN_SECONDS


KEEPALIVE_SECONDS = keepalive_seconds(DEFAULT_POLL_SECONDS)


def poll_headers(etag: str | None, state: NodeState | None) -> dict[str, str]:
    """The headers of a poll: the node's liveness (agent version, state digest) and
    its plan's ETag. ``bench/fleet_sim.py`` builds its simulated polls with this."""
    headers = {AGENT_VERSION_HEADER: agent_version}
    if state is not None:
        headers[STATE_ETAG_HEADER] = state.digest()
    if etag:
        headers["If-None-Match"] = etag
    return headers


class ControlPlane:
    """One aiohttp session to the control plane, authenticated as one node."""

    def __init__(
        self, server: str, *, token: str | None = None, ca_file: str | None = None
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self._ssl: ssl.SSLContext | bool = True
        if ca_file:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except OSError as exc:  # ssl.SSLError is one
                raise EdgesyncError(
                    f"cannot use --ca-file {ca_file}: {file_problem(exc)}", code="BAD_TLS_FILES"
                ) from exc
        self._session: aiohttp.ClientSession | None = None
        self.keepalive_seconds = KEEPALIVE_SECONDS
        self._session_keepalive = KEEPALIVE_SECONDS  # what the open session was made with
        # Whether the last poll's answer said the control plane recorded the liveness
        # it carried; an older control plane does not, and needs a heartbeat each time.
        self.liveness_on_poll = False

    async def __aenter__(self) -> ControlPlane:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def follow_poll_interval(self, seconds: float) -> None:
        """Keep idle connections across polls ``seconds`` apart (from the next session on)."""
        self.keepalive_seconds = keepalive_seconds(seconds)

    async def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is not None and not session.closed:
            if self._session_keepalive == self.keepalive_seconds:
                return session
            await session.close()  # the interval changed (e.g. told at enrollment)
        self._session_keepalive = self.keepalive_seconds
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(keepalive_timeout=self.keepalive_seconds),
            timeout=TIMEOUT,
            headers={"User-Agent": f"edgesync-agent/{agent_version}"},
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        url = f"{self.server}{path}"
        try:
            async with (await self._client()).request(
                method, url, json=body, headers=self._headers(headers), ssl=self._ssl
            ) as response:
                raw = await response.read()
                status = response.status
                response_headers = dict(response.headers)
        except NETWORK_ERRORS as exc:
            # In the operator CLI's words, never aiohttp's ("Cannot connect to host …").
            raise unreachable(url, exc) from exc
        decoded = None
        if raw:
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = None
        if status >= 400:
            raise answered_error(url, status, decoded)
        if status not in (204, 304) and not isinstance(decoded, dict):
            raise EdgesyncError(
                f"{origin(url)} answered HTTP {status} without a JSON object:"
                " is it an edgesync control plane?",
                code="BAD_RESPONSE",
                retryable=True,
            )
        return status, decoded, response_headers

    async def register(
        self, enrollment_token: str, name: str, region: str | None, labels: dict[str, str]
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "region": region,
            "labels": labels,
            "enrollment_token": enrollment_token,
        }
        _, answer, _ = await self._call("POST", "/api/v1/nodes/register", body)
        return dict(answer)

    async def heartbeat(
        self, node_id: str, state: NodeState, report: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Liveness and facts; ``report`` adds what the node has to tell (counters)."""
        body = {**(report or {}), "agent_version": agent_version, "state_etag": state.digest()}
        _, answer, _ = await self._call("POST", f"/api/v1/nodes/{node_id}/heartbeat", body)
        return dict(answer)

    async def rotate_token(self, node_id: str, jti: str) -> dict[str, Any]:
        """Rotate to a token with id ``jti`` (chosen by us, so a lost answer can be asked again)."""
        body = {"jti": jti}
        _, answer, _ = await self._call("POST", f"/api/v1/nodes/{node_id}/token/rotate", body)
        return dict(answer)

    async def plan(
        self,
        node_id: str,
        etag: str | None,
        *,
        full: bool = False,
        state: NodeState | None = None,
    ) -> Plan | None:
        """The node's plan, or None when ``etag`` is still current (304).

        ``full``: the plan as if the node held no functions (to repair its cache).
        ``state``: the node's state, whose digest the poll carries with the agent
        version as its liveness (docs/protocol.md), so no heartbeat is needed.
        """
        headers = poll_headers(etag, state)
        path = f"/api/v1/nodes/{node_id}/sync" + ("?full=true" if full else "")
        status, answer, answered = await self._call("GET", path, headers=headers)
        said = {name.lower(): value for name, value in answered.items()}
        self.liveness_on_poll = said.get(LIVENESS_RECORDED_HEADER.lower()) == LIVENESS_RECORDED
        if status == 304:
            return None
        return Plan.from_dict(answer)

    async def ack(self, node_id: str, ack: Ack) -> None:
        await self._call("POST", f"/api/v1/nodes/{node_id}/sync/ack", ack.to_dict())

    async def download(self, url: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Stream an artifact from its signed URL (no bearer token: the URL is the credential)."""
        try:
            async with (await self._client()).get(url, ssl=self._ssl) as response:
                if response.status >= 400:
                    raw = await response.read()
                    try:
                        decoded = json.loads(raw)
                    except ValueError:
                        decoded = None
                    raise answered_error(url, response.status, decoded)
                async for chunk in response.content.iter_chunked(chunk_size):
                    yield chunk
        except NETWORK_ERRORS as exc:
            raise unreachable(url, exc) from exc  # the origin only: the query is a signature
