"""Helpers of the in-process API tests: the client wrapper and the envelope checks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from appliance.app import make_app
from appliance.config import ServeConfig
from appliance.services import SERVICES, Services

ADMIN_TOKEN = "api-tests-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# Text that must never reach an error body: server internals.
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "SELECT ",
    "INSERT INTO",
    "UPDATE nodes",
    "sqlite3.",
    "aiosqlite",
    "psycopg",
    ADMIN_TOKEN,
)

# The documented retryability of each error code.
RETRYABLE = {"SERVICE_UNAVAILABLE": True, "RATE_LIMITED": True}


@dataclass(frozen=True)
class Node:
    id: str
    token: str
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_error(status: int, text: str, expected_status: int, code: str) -> dict[str, Any]:
    """Assert the docs/protocol.md envelope and return its ``error`` object."""
    assert status == expected_status, text
    body = json.loads(text)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details", "retryable"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["retryable"] is RETRYABLE.get(code, False)
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{marker!r} leaked into {text}"
    return error  # type: ignore[no-any-return]


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.content_type == "application/json"
    return check_error(response.status, await response.text(), status, code)


class Api:
    """The test client plus the few steps every API test repeats."""

    def __init__(self, client: TestClient, config: ServeConfig) -> None:
        self.client = client
        self.config = config
        self._names = 0

    @property
    def services(self) -> Services:
        return self.client.app[SERVICES]  # type: ignore[index]

    # -- plain requests -----------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.client.post(path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.client.delete(path, **kwargs)

    async def json(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        text = await response.text()
        assert response.status == status, text
        return json.loads(text)

    # -- enrollment and nodes -----------------------------------------------------------

    async def enrollment_token(self, **body: Any) -> str:
        created = await self.json(
            "POST", "/api/v1/enrollment-tokens", 201, json=body, headers=ADMIN
        )
        return str(created["token"])

    async def register(self, name: str | None = None, **extra: Any) -> Node:
        self._names += 1
        token = extra.pop("enrollment_token", None) or await self.enrollment_token()
        body = {"name": name or f"edge-{self._names}", "enrollment_token": token, **extra}
        created = await self.json("POST", "/api/v1/nodes/register", 201, json=body)
        return Node(created["node_id"], created["token"], created)

    async def node(self, node: Node) -> dict[str, Any]:
        return await self.json("GET", f"/api/v1/nodes/{node.id}", headers=ADMIN)  # type: ignore[no-any-return]

    # -- functions ----------------------------------------------------------------------

    def form(
        self, name: str, version: str, module: bytes, sha: str | None = None
    ) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("name", name)
        data.add_field("version", version)
        if sha is not None:
            data.add_field("sha256", sha)
        data.add_field("module", module, filename="function.wasm", content_type="application/wasm")
        return data

    def upload(
        self,
        name: str,
        version: str,
        module: bytes,
        sha: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        return self.client.post(
            "/api/v1/functions",
            data=self.form(name, version, module, sha),
            headers=ADMIN if headers is None else headers,
        )

    async def upload_ok(self, name: str, version: str, module: bytes) -> dict[str, Any]:
        response = await self.upload(name, version, module)
        text = await response.text()
        assert response.status == 201, text
        return json.loads(text)  # type: ignore[no-any-return]

    async def add_schema(self, version: int, up_sql: str, **extra: Any) -> Any:
        body = {"version": version, "up_sql": up_sql, **extra}
        return await self.json("POST", "/api/v1/schemas", 201, json=body, headers=ADMIN)

    # -- sync ---------------------------------------------------------------------------

    def poll(self, node: Node, etag: str | None = None) -> Any:
        headers = dict(node.headers)
        if etag is not None:
            headers["If-None-Match"] = etag
        return self.client.get(f"/api/v1/nodes/{node.id}/sync", headers=headers)

    async def plan(self, node: Node, etag: str | None = None) -> dict[str, Any]:
        response = await self.poll(node, etag)
        text = await response.text()
        assert response.status == 200, text
        body = json.loads(text)
        assert response.headers["ETag"] == body["etag"]
        return body  # type: ignore[no-any-return]

    def ack(
        self,
        node: Node,
        sync_id: str,
        state: dict[str, Any],
        status: str = "success",
        error: dict[str, Any] | None = None,
    ) -> Any:
        body = {"sync_id": sync_id, "status": status, "state": state, "error": error}
        return self.client.post(
            f"/api/v1/nodes/{node.id}/sync/ack", json=body, headers=node.headers
        )

    async def apply(self, node: Node, plan: dict[str, Any]) -> dict[str, Any]:
        """Ack ``plan`` as fully applied: the node now runs its target."""
        response = await self.ack(node, plan["sync_id"], plan["target"])
        text = await response.text()
        assert response.status == 200, text
        return json.loads(text)  # type: ignore[no-any-return]

    async def history(self, node: Node, **query: Any) -> list[dict[str, Any]]:
        body = await self.json(
            "GET", f"/api/v1/nodes/{node.id}/sync/history", params=query, headers=node.headers
        )
        return body["records"]  # type: ignore[no-any-return]


ApiFactory = Callable[..., Awaitable[Api]]


def api_factory(
    aiohttp_client: Any,
    data_root: Path,
    prefix: str = "data",
    prepare: Callable[[dict[str, Any]], None] | None = None,
    **defaults: Any,
) -> ApiFactory:
    """``await build(**ServeConfig overrides)``: an in-process app with its own data dir
    (``data_root/<prefix>-N``), the test admin token and cheap bcrypt. ``defaults``
    come before the overrides; ``prepare`` may fill in the overrides last."""
    count = 0

    async def build(**overrides: Any) -> Api:
        nonlocal count
        count += 1
        if prepare is not None:
            prepare(overrides)
        settings: dict[str, Any] = {
            "data_dir": data_root / f"{prefix}-{count}",
            "admin_token": ADMIN_TOKEN,
            "bcrypt_rounds": 4,
            **defaults,
            **overrides,
        }
        config = ServeConfig(**settings)
        client = await aiohttp_client(make_app(config))
        return Api(client, config)

    return build
