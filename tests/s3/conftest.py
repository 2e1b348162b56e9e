"""Fixtures of the S3 artifact store tests: a moto S3 server and apps that use it.

``moto`` is one server for the session, emptied before each test; tests that
stop their server (outages) take ``own_moto`` instead. The in-process apps reuse
the API suite's client wrapper (``tests/api/api_support.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.app import make_app
from appliance.config import ServeConfig

from .support import MotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_support import ADMIN_TOKEN, Api, ApiFactory


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer.launch(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's S3 server, with no buckets."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def own_moto(tmp_path: Path) -> Iterator[MotoServer]:
    """An S3 server for this test alone: it may be stopped and started again."""
    server = MotoServer.launch(tmp_path / "own-moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_s3_api(aiohttp_client: Any, tmp_path: Path, moto: MotoServer) -> ApiFactory:
    """An in-process app whose artifacts live on ``moto`` (``ServeConfig`` overrides)."""
    count = 0

    async def build(**overrides: Any) -> Api:
        nonlocal count
        count += 1
        settings: dict[str, Any] = {
            "data_dir": tmp_path / f"data-{count}",
            "admin_token": ADMIN_TOKEN,
            "bcrypt_rounds": 4,
            "artifact_url": moto.url(),
            **overrides,
        }
        config = ServeConfig(**settings)
        client = await aiohttp_client(make_app(config))
        return Api(client, config)

    return build
