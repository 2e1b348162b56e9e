"""The OpenAPI document is valid OpenAPI 3, names every route the app serves, states
who may call each, and matches real answers (tests/test_openapi_fuzz.py fuzzes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator
from openapi_schema_validator import validate as openapi_validate
from openapi_spec_validator import validate

from appliance.app import make_app
from appliance.config import ServeConfig
from appliance.middleware import ROUTE_ACCESS, Access
from appliance.openapi import openapi_document


def test_document_is_valid_openapi() -> None:
    validate(openapi_document())


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = make_app(ServeConfig(data_dir=tmp_path, admin_token="x" * 20))
    documented = {
        (path, method.upper())
        for path, operations in openapi_document()["paths"].items()
        for method in operations
    }
    served = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served, "the app registers routes"
    assert served - documented == set()
    assert documented - served == set()


def test_route_access_rules_match_the_documented_security(tmp_path: Path) -> None:
    """A route the document calls public is public in the middleware, and no other."""
    app = make_app(ServeConfig(data_dir=tmp_path, admin_token="x" * 20))
    for route in app.router.routes():
        if route.resource is None or route.method == "HEAD":
            continue
        template = route.resource.canonical
        operation = openapi_document()["paths"][template][route.method.lower()]
        access = ROUTE_ACCESS.get((route.method, template), Access.BEARER)
        documented_open = operation["security"] == []
        assert documented_open == (access in (Access.PUBLIC, Access.SIGNED)), template


def validate_schema(instance: Any, schema: dict[str, Any]) -> None:
    openapi_validate(instance, schema, cls=OAS30Validator)


def _response_schema(path: str, method: str, status: str) -> dict[str, Any]:
    document = openapi_document()
    schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]
    return {**schema["schema"], "components": document["components"]}


async def test_null_fields_match_the_document(aiohttp_client: Any, tmp_path: Path) -> None:
    # region and next_cursor are null in real answers: the document must say so.
    admin = {"Authorization": "Bearer " + "x" * 20}
    config = ServeConfig(data_dir=tmp_path, admin_token="x" * 20, bcrypt_rounds=4)
    client = await aiohttp_client(make_app(config))
    created = await client.post("/api/v1/enrollment-tokens", json={}, headers=admin)
    token = await created.json()
    validate_schema(token, _response_schema("/api/v1/enrollment-tokens", "post", "201"))
    register = {"name": "edge", "enrollment_token": token["token"]}
    assert (await client.post("/api/v1/nodes/register", json=register)).status == 201
    nodes = await (await client.get("/api/v1/nodes", headers=admin)).json()
    assert nodes["next_cursor"] is None and nodes["nodes"][0]["region"] is None
    validate_schema(nodes, _response_schema("/api/v1/nodes", "get", "200"))
    functions = await (await client.get("/api/v1/functions", headers=admin)).json()
    validate_schema(functions, _response_schema("/api/v1/functions", "get", "200"))
