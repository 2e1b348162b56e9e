"""The agent's content-addressed module cache: ``DIR/artifacts/sha256/<hex>.wasm``.

A module is downloaded to a temporary file while hashing, fsynced, and renamed
into place only when its SHA-256 matches; a file under its hash is therefore
always the right bytes, and a cached hash is never downloaded again. Files no
state refers to are collected after each release.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from agent.datadir import make_private_dir
from agent.failures import ArtifactCorrupt
from agent.runtime.base import module_path, modules_dir

Downloader = Callable[[str], AsyncIterator[bytes]]


class ArtifactCache:
    def __init__(self, data_dir: Path) -> None:
        self.root = modules_dir(data_dir)
        self.tmp = self.root.parent / "tmp"
        make_private_dir(self.root)
        make_private_dir(self.tmp)
        self._data_dir = data_dir

    def path(self, sha256: str) -> Path:
        return module_path(self._data_dir, sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    async def fetch(self, sha256: str, url: str, download: Downloader, attempts: int = 2) -> Path:
        """Return the verified module's path, downloading it if it is not cached.

        A hash mismatch is retried once with a fresh download (a proxy may have
        mangled it); a second mismatch is permanent.
        """
        target = self.path(sha256)
        if target.exists():
            return target
        actual = ""
        for _ in range(attempts):
            partial = self.tmp / f"{sha256}.{uuid.uuid4().hex}.part"
            try:
                actual = await self._download_to(partial, url, download)
                if actual == sha256:
                    await asyncio.to_thread(_publish, partial, target)
                    return target
            finally:
                with suppress(FileNotFoundError):
                    partial.unlink()
        raise ArtifactCorrupt(
            "downloaded module does not match its sha256",
            details={"expected": sha256, "actual": actual},
        )

    @staticmethod
    async def _download_to(partial: Path, url: str, download: Downloader) -> str:
        digest = hashlib.sha256()
        handle = await asyncio.to_thread(_create_private, partial)
        try:
            async for chunk in download(url):
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush, handle)
        finally:
            handle.close()
        return digest.hexdigest()

    def collect(self, keep: Iterable[str]) -> list[str]:
        """Delete every module whose hash is not in ``keep``, and every partial download.

        Called between releases (never during a download) by the one agent that holds
        the data dir, so anything in ``tmp`` is left by an interrupted run.
        """
        wanted = set(keep)
        removed = []
        for path in self.root.iterdir():
            if path.name.removesuffix(".wasm") not in wanted or path.suffix != ".wasm":
                with suppress(FileNotFoundError):
                    path.unlink()
                removed.append(path.name.removesuffix(".wasm"))
        for partial in self.tmp.iterdir():
            with suppress(FileNotFoundError):
                partial.unlink()
        return removed


def _create_private(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _flush(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]


def _publish(partial: Path, target: Path) -> None:
    os.replace(partial, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
