"""An interrupted upload never blocks its version, and leaves no staging file behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from api_support import ADMIN, Api, ApiFactory, expect_error

from appliance.artifacts import ArtifactStoreUnavailable
from appliance.store.db import DatabaseUnavailable


def staging_files(api: Api) -> list[Path]:
    return [p for p in (api.config.data_dir / "staging").rglob("*") if p.is_file()]


async def test_a_failed_upload_whose_claim_could_not_be_released_is_retried_at_once(
    api: Api, wasm, monkeypatch: Any
) -> None:
    async def put_fails(key: str, path: Path) -> None:
        raise ArtifactStoreUnavailable("the artifact store went away")

    async def release_fails(function_id: str) -> None:
        raise DatabaseUnavailable("and so did the database")

    monkeypatch.setattr(api.services.artifacts, "put", put_fails)
    monkeypatch.setattr(api.services.store, "release_function", release_fails)
    await expect_error(await api.upload("hello", "1.0", wasm.module(1)), 503, "SERVICE_UNAVAILABLE")
    listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
    assert listed["functions"] == []
    monkeypatch.undo()
    created = await api.upload_ok("hello", "1.0", wasm.module(1))
    assert created["version"] == "1.0"
    assert staging_files(api) == []
    # And the version is now taken for good.
    await expect_error(await api.upload("hello", "1.0", wasm.module(2)), 409, "FUNCTION_EXISTS")


async def test_a_second_upload_while_the_first_is_storing_still_loses(
    api: Api, wasm, monkeypatch: Any
) -> None:
    store_put = api.services.artifacts.put
    answers: list[dict[str, Any]] = []

    async def put_then_race(key: str, path: Path) -> None:
        # The first upload holds its claim: a concurrent one of the same version loses.
        response = await api.upload("hello", "1.0", wasm.module(2))
        answers.append(await expect_error(response, 409, "FUNCTION_EXISTS"))
        await store_put(key, path)

    monkeypatch.setattr(api.services.artifacts, "put", put_then_race)
    await api.upload_ok("hello", "1.0", wasm.module(1))
    [lost] = answers
    assert lost["details"]["upload_in_progress"] is True


async def test_staging_left_by_dead_servers_is_removed_at_start(
    make_api: ApiFactory, tmp_path: Path, wasm
) -> None:
    data_dir = tmp_path / "restarted"
    staging = data_dir / "staging"
    dead = staging / ("d" * 32)
    dead.mkdir(parents=True)
    (dead / "upload-1.wasm").write_bytes(b"\0" * 4096)
    (staging / "upload-legacy.wasm").write_bytes(b"\0" * 4096)  # the pre-instance layout
    held = staging / ("e" * 32)  # a live server on the same data dir holds its own
    held.mkdir()
    (held / "upload-2.wasm").write_bytes(b"x")
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        api = await make_api(data_dir=data_dir)
        assert not dead.exists()
        assert not (staging / "upload-legacy.wasm").exists()
        assert (held / "upload-2.wasm").exists()
        assert [p.name for p in staging_files(api)] == ["upload-2.wasm"]
        await api.upload_ok("hello", "1.0", wasm.module(1))
    finally:
        os.close(fd)
