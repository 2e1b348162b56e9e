"""Small helpers every route module uses: the caller, JSON bodies, query params."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from appliance.auth import Principal
from edgesync.errors import InvalidJSON, Unauthorized, UnsupportedMediaType, ValidationFailed

PRINCIPAL = "edgesync.principal"


def principal(request: web.Request) -> Principal:
    """The authenticated caller, set by the auth middleware (a route it let through
    unauthenticated never gets one: 401, not a KeyError)."""
    caller: Principal | None = request.get(PRINCIPAL)
    if caller is None:
        raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return caller


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object body, or a 400/415 envelope.

    Strict where Python's ``json`` is lenient, so that nothing downstream meets a
    value no store or client can hold: strict UTF-8; integers must fit in 64 bits;
    ``NaN``, ``Infinity`` and numbers beyond a double are refused; strings hold no
    NUL and no lone surrogate (``\\u0000``, ``\\ud800``); nesting too deep to parse
    is a 400, not a ``RecursionError``.
    """
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
    return parse_json_object(raw)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _RefusedValue(ValueError):
    pass


def _int64(text: str) -> int:
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _RefusedValue("an integer does not fit in 64 bits")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedValue("a number is out of range")
    return value


def _no_constants(name: str) -> float:
    raise _RefusedValue(f"{name} is not JSON")


def _check_strings(body: Any) -> None:
    """Refuse NUL (PostgreSQL text cannot hold it) and lone surrogates (no UTF-8
    for them), in keys and values; iterative, as the nesting may be deep."""
    pending = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise _RefusedValue("a string holds a NUL character")
            value.encode("utf-8")  # UnicodeEncodeError for a lone surrogate


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body under the rules of :func:`read_json`."""
    try:
        # UTF-8 strictly (a BOM aside): json.loads would decode "surrogatepass".
        text = raw.decode("utf-8-sig")
        body = json.loads(text, parse_int=_int64, parse_float=_finite, parse_constant=_no_constants)
        if "\\u" in text:  # only an escape can put a NUL or a lone surrogate in a string
            _check_strings(body)
    except _RefusedValue as exc:
        raise InvalidJSON(f"request body is not acceptable JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidJSON("request body is nested too deeply") from exc
    except UnicodeError as exc:
        raise InvalidJSON("request body is not valid UTF-8 or holds a lone surrogate") from exc
    except ValueError as exc:
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
