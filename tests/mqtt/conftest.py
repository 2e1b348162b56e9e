"""Fixtures of the MQTT suite: control planes with MQTT push, served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_support import Plane, PlaneFactory


@pytest.fixture
async def make_plane(tmp_path: Path) -> AsyncIterator[PlaneFactory]:
    """``await make_plane(**ServeConfig overrides)``: a started control plane (embedded
    broker on 127.0.0.1:0 unless overridden), closed after the test."""
    planes: list[Plane] = []

    async def build(**overrides: Any) -> Plane:
        data_dir = overrides.pop("data_dir", None) or tmp_path / f"plane-{len(planes)}"
        plane = Plane(data_dir, **overrides)
        planes.append(plane)
        return await plane.start()

    try:
        yield build
    finally:
        for plane in reversed(planes):
            await plane.close()


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> Plane:
    return await make_plane()
