"""Enrollment tokens: how an admin lets a new node join."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from appliance.api.common import json_response, optional_str, principal, read_json
from appliance.services import services
from appliance.store.records import EnrollmentTokenRecord
from edgesync.errors import ValidationFailed
from edgesync.protocol import format_time, utcnow

routes = web.RouteTableDef()

MAX_TTL_SECONDS = 365 * 24 * 3600


def _bounded_int(value: object, field: str, default: int, high: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise ValidationFailed(
            f"{field} must be an integer from 1 to {high}", details={"field": field}
        )
    return value


@routes.post("/api/v1/enrollment-tokens")
async def create_enrollment_token(request: web.Request) -> web.Response:
    principal(request).require_admin()
    body = await read_json(request, allow_empty=True)
    ttl = _bounded_int(body.get("ttl_seconds"), "ttl_seconds", 3600, MAX_TTL_SECONDS)
    max_uses = _bounded_int(body.get("max_uses"), "max_uses", 1, 1_000_000)
    region = optional_str(body, "region", 100)
    svc = services(request)
    token_id, token, secret_hash = await svc.authority.new_enrollment_secret()
    now = utcnow()
    expires_at = format_time(now + timedelta(seconds=ttl))
    await svc.store.create_enrollment_token(
        EnrollmentTokenRecord(
            id=token_id,
            secret_hash=secret_hash,
            region=region,
            max_uses=max_uses,
            uses=0,
            expires_at=expires_at,
            created_at=format_time(now),
        )
    )
    return json_response(
        {"token": token, "expires_at": expires_at, "max_uses": max_uses, "region": region},
        status=201,
    )
