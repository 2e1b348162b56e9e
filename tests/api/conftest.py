"""In-process API tests: the real app behind aiohttp's test client.

Every test runs once per database kind (``database_kind``, tests/conftest.py):
the embedded SQLite store in the data dir, and PostgreSQL (a fresh schema for
every app). The artifact store is the data-dir folder.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_support import Api, ApiFactory, api_factory


@pytest.fixture
def make_api(
    aiohttp_client: Any, tmp_path: Any, database_kind: str, make_database_url: Any
) -> ApiFactory:
    """Build an app with ``ServeConfig`` overrides; each call gets its own data dir
    and its own empty database (unless ``database_url`` is given)."""

    def fresh_database(overrides: dict[str, Any]) -> None:
        if "database_url" not in overrides and database_kind != "sqlite":
            # (SQLite: the embedded default in the data dir, as `edgesync serve` has it.)
            overrides["database_url"] = make_database_url()

    return api_factory(aiohttp_client, tmp_path, prepare=fresh_database)


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()
