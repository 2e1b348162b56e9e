"""Small helpers every route module uses: the caller, JSON bodies, query params."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from appliance.auth import Principal
from edgesync.errors import InvalidJSON, UnsupportedMediaType, ValidationFailed

PRINCIPAL = "edgesync.principal"


def principal(request: web.Request) -> Principal:
    """The authenticated caller, set by the auth middleware."""
    return request[PRINCIPAL]  # type: ignore[no-any-return]


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object body, or a 400/415 envelope."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidJSON("request body must be a JSON object")
    if request.content_type not in (
        "application/json",
        "application/octet-stream",
        "text/plain",
        "",
    ):
        raise UnsupportedMediaType("request body must be application/json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidJSON("request body must be a JSON object")
    return body


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be an integer", details={"field": name}) from exc
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}", details={"field": name})
    return value


def optional_str(body: dict[str, Any], key: str, max_length: int = 200) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise ValidationFailed(
            f"{key} must be a string of at most {max_length} characters", details={"field": key}
        )
    return value


def base_url(request: web.Request, public_url: str | None) -> str:
    """Where nodes reach this control plane: --public-url, else the request's origin."""
    if public_url:
        return public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"
