"""Schema migrations for the nodes' edge databases: append-only, checked on entry
(in a child process with time and memory limits: :mod:`appliance.migration_check`).

The check applies the chain (and, with a ``down_sql``, down and up again) and
lints ``up_sql`` for destructive statements (:mod:`appliance.migration_lint`):
those are refused with DESTRUCTIVE_MIGRATION unless ``allow_destructive``."""

from __future__ import annotations

import hashlib

from aiohttp import web

from appliance.api.common import json_response, optional_str, principal, read_json
from appliance.migration_check import CheckLimits, check_chain
from appliance.services import services
from appliance.store.records import MigrationRecord
from edgesync.errors import DestructiveMigration, SchemaVersionConflict, ValidationFailed
from edgesync.protocol import SCHEMA_VERSION_MAX, format_time, utcnow

routes = web.RouteTableDef()

SQL_LIMIT = 1024 * 1024


@routes.post("/api/v1/schemas")
async def add_migration(request: web.Request) -> web.Response:
    principal(request).require_admin()
    body = await read_json(request)
    version = body.get("version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 1 <= version <= SCHEMA_VERSION_MAX
    ):
        raise ValidationFailed(
            f"version must be an integer from 1 to {SCHEMA_VERSION_MAX}",
            details={"field": "version"},
        )
    up_sql = body.get("up_sql")
    if not isinstance(up_sql, str) or not up_sql.strip() or len(up_sql) > SQL_LIMIT:
        raise ValidationFailed("up_sql must be non-empty SQL text", details={"field": "up_sql"})
    down_sql = optional_str(body, "down_sql", SQL_LIMIT)
    if down_sql is not None and not down_sql.strip():
        raise ValidationFailed(
            "down_sql must be non-empty SQL text when given", details={"field": "down_sql"}
        )
    description = optional_str(body, "description", 500) or ""
    allow_destructive = body.get("allow_destructive", False)
    if not isinstance(allow_destructive, bool):
        raise ValidationFailed(
            "allow_destructive must be true or false", details={"field": "allow_destructive"}
        )
    config = services(request).config
    store = services(request).store
    accepted = await store.list_migrations()
    expected = (accepted[-1].version if accepted else 0) + 1
    if version != expected:
        raise SchemaVersionConflict(
            f"schema version must be {expected}",
            details={"expected_version": expected, "version": version},
        )
    chain = [(m.version, m.up_sql) for m in accepted] + [(version, up_sql)]
    limits = CheckLimits(
        timeout_seconds=config.migration_check_timeout,
        memory_bytes=config.migration_check_memory_mb * 1024 * 1024,
    )
    destructive = await check_chain(chain, limits, down_sql=down_sql, lint=not allow_destructive)
    if destructive:
        raise DestructiveMigration(
            f"up_sql is destructive ({_listing(destructive)}); send allow_destructive: true"
            " (edgesync schema add --allow-destructive) to accept it",
            details={"version": version, "statements": destructive},
        )
    record = MigrationRecord(
        version=version,
        description=description,
        up_sql=up_sql,
        down_sql=down_sql,
        checksum=hashlib.sha256(up_sql.encode()).hexdigest(),
        created_at=format_time(utcnow()),
    )
    await store.add_migration(record)  # re-checks the version inside its transaction
    return json_response(record.to_api(), status=201)


def _listing(statements: list[dict[str, object]], shown: int = 3) -> str:
    """``statement 2: drop, statement 5: delete_without_where, …`` for the message."""
    parts = [f"statement {s['index']}: {s['kind']}" for s in statements[:shown]]
    if len(statements) > shown:
        parts.append(f"{len(statements) - shown} more")
    return ", ".join(parts)


@routes.get("/api/v1/schemas")
async def list_migrations(request: web.Request) -> web.Response:
    principal(request)  # the admin or any node
    migrations = await services(request).store.list_migrations()
    return json_response({"migrations": [m.to_api() for m in migrations]})
