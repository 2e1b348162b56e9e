"""Releases: create one (schema and functions as one unit), list them, read one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.api.common import json_response, optional_str, principal, query_int, read_json
from appliance.services import services
from edgesync.errors import InvalidRelease
from edgesync.protocol import SCHEMA_VERSION_MAX

routes = web.RouteTableDef()

MAX_FUNCTIONS = 1000


def parse_release_body(body: dict[str, Any]) -> tuple[int, list[tuple[str, str]], str | None]:
    """``schema_version``, ``functions`` [{name, version}] and ``notes``, or 400."""
    version = body.get("schema_version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 0 <= version <= SCHEMA_VERSION_MAX
    ):
        raise InvalidRelease(
            f"schema_version must be an integer from 0 to {SCHEMA_VERSION_MAX}",
            details={"field": "schema_version"},
        )
    raw = body.get("functions", [])
    if not isinstance(raw, list) or len(raw) > MAX_FUNCTIONS:
        raise InvalidRelease(
            f"functions must be a list of at most {MAX_FUNCTIONS} {{name, version}} objects",
            details={"field": "functions"},
        )
    functions: list[tuple[str, str]] = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        ver = item.get("version") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(ver, str) or not name or not ver:
            raise InvalidRelease(
                "each function is an object with a name and a version",
                details={"field": f"functions[{index}]"},
            )
        functions.append((name, ver))
    return version, functions, optional_str(body, "notes", 2000)


@routes.post("/api/v1/releases")
async def create_release(request: web.Request) -> web.Response:
    principal(request).require_admin()
    version, functions, notes = parse_release_body(await read_json(request))
    release = await services(request).store.create_release(version, functions, notes)
    return json_response(release.to_api(), status=201)


@routes.get("/api/v1/releases")
async def list_releases(request: web.Request) -> web.Response:
    principal(request).require_admin()
    releases, cursor = await services(request).store.list_releases(
        limit=query_int(request, "limit", 100, 1, 1000), cursor=request.query.get("cursor")
    )
    return json_response({"releases": [r.to_api() for r in releases], "next_cursor": cursor})


@routes.get("/api/v1/releases/{release_id}")
async def get_release(request: web.Request) -> web.Response:
    principal(request).require_admin()
    store = services(request).store
    release = await store.get_release(request.match_info["release_id"])
    body = release.to_api()
    previous = await store.previous_release(release)
    # What `release show` prints as the diff: the release just before this one.
    body["previous_release_id"] = previous.id if previous else None
    return json_response(body)
