"""The embedded artifact store: a folder mirroring the S3 bucket layout.

``<root>/wasm-functions/{name}/{version}/function.wasm``. An object appears by
an atomic rename of a fully written, fsynced file (hard-linked from the staging
file when both share a filesystem, copied otherwise).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path

from appliance.artifacts.base import ArtifactMissing
from edgesync.protocol import ARTIFACT_BUCKET


class FolderArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bucket = root / ARTIFACT_BUCKET
        self.bucket.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.bucket / key).resolve()
        if self.bucket.resolve() not in path.parents:
            raise ArtifactMissing(key)  # keys are validated upstream; never escape the bucket
        return path

    async def put(self, key: str, source: Path) -> None:
        await asyncio.to_thread(self._put, self._path(key), source)

    @staticmethod
    def _put(target: Path, source: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            try:
                os.link(source, partial)
            except OSError:  # another filesystem: copy, then make it durable
                shutil.copyfile(source, partial)
                with partial.open("rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def presigned_url(self, key: str, ttl_seconds: int) -> str | None:
        return None  # nodes download through the control plane's signed URLs

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def read(self, key: str, chunk_size: int = 256 * 1024) -> AsyncGenerator[bytes, None]:
        try:
            handle = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError as exc:
            raise ArtifactMissing(key) from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await asyncio.to_thread(path.unlink, True)
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()  # only succeeds once empty
            except OSError:
                break

    async def ping(self) -> None:
        if not os.access(self.bucket, os.W_OK):
            raise OSError(f"artifact folder {self.bucket} is not writable")

    async def close(self) -> None:
        return None
