"""The OpenAPI document is valid OpenAPI 3 and names every route the app serves."""

from __future__ import annotations

from pathlib import Path

from openapi_spec_validator import validate

from appliance.app import make_app
from appliance.config import ServeConfig
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
