"""Schemathesis against the served app: no 5xx, and every answer as documented.

The control plane runs on a loopback port in a thread of its own (Schemathesis
calls it with ``requests``, synchronously), with a real admin token, a
registered node and an uploaded function, so that the authenticated routes are
exercised past their 401s: every case goes out with the token its route takes,
and path ids are the real node's and function's. Schemathesis generates data
that fits the document and data that does not; both must get a documented
answer. Hypothesis is derandomized and bounded: a few hundred cases, the same
ones on every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from appliance.app import make_app
from appliance.config import ServeConfig
from appliance.openapi import openapi_document
from edgesync.http_server import EnvelopeAppRunner

ADMIN_TOKEN = "openapi-fuzz-admin-token-0123456789"
# Bounded for the suite; EDGESYNC_FUZZ_CASES runs a longer hunt by hand.
CASES = int(os.environ.get("EDGESYNC_FUZZ_CASES", "500"))
CHECKS = ("not_a_server_error", "response_schema_conformance", "status_code_conformance")
# Routes only a node may call; the rest take the admin token.
NODE_ONLY = ("/heartbeat", "/token/rotate", "/sync", "/sync/ack")


@dataclass
class Served:
    url: str
    node_id: str = ""
    node_token: str = ""
    function_id: str = ""
    statuses: dict[str, int] = field(default_factory=dict)


class ServerThread(threading.Thread):
    """The app under ``EnvelopeAppRunner`` on its own event loop."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        super().__init__(daemon=True)
        self._config = ServeConfig(
            data_dir=data_dir,
            database_url=database_url,
            admin_token=ADMIN_TOKEN,
            bcrypt_rounds=4,
        )
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping = asyncio.Event()
        self.port = 0

    def run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        runner = EnvelopeAppRunner(make_app(self._config), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def start_and_wait(self) -> None:
        self.start()
        assert self._ready.wait(60), "the server did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(60)


def call(url: str, method: str, body: Any = None, token: str = ADMIN_TOKEN, **kw: Any) -> Any:
    data = json.dumps(body).encode() if body is not None else kw.pop("data", None)
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, wasm: Any
) -> Iterator[Served]:
    """The server on each metadata store: what one store accepts the other may not
    (PostgreSQL text holds no NUL, its schema versions are 32-bit)."""
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres").new_url()
    server = ServerThread(tmp_path_factory.mktemp("fuzz") / "data", database_url)
    server.start_and_wait()
    state = Served(f"http://127.0.0.1:{server.port}")
    try:
        enrollment = call(f"{state.url}/api/v1/enrollment-tokens", "POST", {})["token"]
        node = call(
            f"{state.url}/api/v1/nodes/register",
            "POST",
            {"name": "fuzzed", "enrollment_token": enrollment},
        )
        state.node_id, state.node_token = node["node_id"], node["token"]
        boundary = "fuzzboundary"
        form = (
            b"".join(
                f"--{boundary}\r\nContent-Disposition: form-data; "
                f'name="{name}"{extra}\r\n\r\n'.encode()
                + value
                + b"\r\n"
                for name, value, extra in (
                    ("name", b"hello", ""),
                    ("version", b"1.0", ""),
                    ("module", wasm.module(), '; filename="f.wasm"'),
                )
            )
            + f"--{boundary}--\r\n".encode()
        )
        uploaded = call(
            f"{state.url}/api/v1/functions",
            "POST",
            data=form,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        state.function_id = uploaded["id"]
        yield state
    finally:
        server.stop()


def prepare(case: Any, served: Served, real_ids: bool) -> dict[str, str]:
    """Point the case at the real node and function, and pick its route's token."""
    path = case.path
    if real_ids and "node_id" in (case.path_parameters or {}):
        case.path_parameters["node_id"] = served.node_id
    if real_ids and "function_id" in (case.path_parameters or {}):
        case.path_parameters["function_id"] = served.function_id
    if path.startswith("/api/v1/nodes/{node_id}") and path.endswith(NODE_ONLY):
        return {"Authorization": f"Bearer {served.node_token}"}
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(served: Served) -> None:
    from schemathesis import checks

    schema = schemathesis.openapi.from_dict(openapi_document())
    strategy = st.one_of(
        schema.as_strategy(generation_mode=GenerationMode.POSITIVE),
        schema.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    selected = [getattr(checks, name) for name in CHECKS]

    @settings(
        max_examples=CASES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    # Mostly the real ids: a made-up id stops at the 403/404 of its first check.
    @given(case=strategy, real_ids=st.integers(0, 3).map(bool))
    def exercise(case: Any, real_ids: bool) -> None:
        headers = prepare(case, served, real_ids)
        response = case.call(base_url=served.url, headers=headers, timeout=60)
        label = f"{case.method} {case.path} {response.status_code}"
        served.statuses[label] = served.statuses.get(label, 0) + 1
        if response.status_code == 200 and case.path.endswith("/token/rotate"):
            served.node_token = response.json()["token"]  # the old one is gone now
        case.validate_response(response, checks=selected, headers=headers)

    exercise()
    # The run reached past authentication on the routes that need it.
    reached = {label for label in served.statuses if label.split(" ")[2].startswith("2")}
    for route in ("GET /api/v1/nodes/{node_id}/sync ", "POST /api/v1/enrollment-tokens "):
        assert any(label.startswith(route) for label in reached), sorted(served.statuses.items())
