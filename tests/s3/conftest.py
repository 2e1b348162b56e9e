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

from .support import MotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_support import ApiFactory, api_factory


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
    return api_factory(aiohttp_client, tmp_path, artifact_url=moto.url())
