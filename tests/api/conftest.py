"""In-process API tests: the real app behind aiohttp's test client.

Every test runs once per database kind (``database_kind``, tests/conftest.py):
the embedded SQLite store in the data dir, and PostgreSQL (a fresh schema for
every app). The artifact store is the data-dir folder.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_support import ADMIN_TOKEN, Api, ApiFactory

from appliance.app import make_app
from appliance.config import ServeConfig


@pytest.fixture
def make_api(
    aiohttp_client: Any, tmp_path: Any, database_kind: str, make_database_url: Any
) -> ApiFactory:
    """Build an app with ``ServeConfig`` overrides; each call gets its own data dir
    and its own empty database (unless ``database_url`` is given)."""
    count = 0

    async def build(**overrides: Any) -> Api:
        nonlocal count
        count += 1
        if "database_url" not in overrides and database_kind != "sqlite":
            # (SQLite: the embedded default in the data dir, as `edgesync serve` has it.)
            overrides["database_url"] = make_database_url()
        settings: dict[str, Any] = {
            "data_dir": tmp_path / f"data-{count}",
            "admin_token": ADMIN_TOKEN,
            "bcrypt_rounds": 4,
            **overrides,
        }
        config = ServeConfig(**settings)
        client = await aiohttp_client(make_app(config))
        return Api(client, config)

    return build


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()
