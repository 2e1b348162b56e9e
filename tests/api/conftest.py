"""In-process API tests: the real app (SQLite + folder store) behind aiohttp's test client."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import ADMIN_TOKEN, Api, ApiFactory

from appliance.app import make_app
from appliance.config import ServeConfig


@pytest.fixture
def make_api(aiohttp_client: Any, tmp_path: Any) -> ApiFactory:
    """Build an app with ``ServeConfig`` overrides; each call gets its own data dir."""
    count = 0

    async def build(**overrides: Any) -> Api:
        nonlocal count
        count += 1
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
