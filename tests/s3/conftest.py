"""Fixtures of the S3 artifact store tests: a SeaweedFS S3 server and apps that use it.

``s3`` is one server for the session, emptied before each test; tests that stop
their server (outages) take ``own_s3`` instead. The in-process apps reuse the
API suite's client wrapper (``tests/api/api_support.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import S3Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_support import ApiFactory, api_factory


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server.launch(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The session's S3 server, with no buckets."""
    s3_server.reset()
    return s3_server


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server for this test alone: it may be stopped and started again."""
    server = S3Server.launch(tmp_path / "seaweedfs")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_s3_api(aiohttp_client: Any, tmp_path: Path, s3: S3Server) -> ApiFactory:
    """An in-process app whose artifacts live on ``s3`` (``ServeConfig`` overrides)."""
    return api_factory(aiohttp_client, tmp_path, artifact_url=s3.url())
