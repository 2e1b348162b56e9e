"""The OpenAPI 3 document of the control plane's API (placeholder, filled below)."""

from __future__ import annotations

from typing import Any


def openapi_document() -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "edgesync", "version": "1"}, "paths": {}}
