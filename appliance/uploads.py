"""Receiving a function upload: multipart streamed to a staging file.

The module never sits whole in memory: each chunk is hashed and written as it
arrives, the size limit is enforced while streaming, and the staging file is
removed on every failure path, so a refused upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import BodyPartReader, web

from edgesync.errors import (
    InvalidMultipart,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)

CHUNK = 256 * 1024
FIELD_LIMIT = 1024
# Multipart framing around the module: boundaries, headers and small fields.
FRAMING_ALLOWANCE = 64 * 1024


@dataclass
class StagedUpload:
    fields: dict[str, str]
    path: Path | None = None
    size: int = 0
    sha256: str = ""

    def discard(self) -> None:
        if self.path is not None:
            with suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None


async def receive_upload(request: web.Request, staging_dir: Path, max_bytes: int) -> StagedUpload:
    """Read the multipart form; the ``module`` file part goes to a staging file."""
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType("upload must be multipart/form-data")
    if (
        request.content_length is not None
        and request.content_length > max_bytes + FRAMING_ALLOWANCE
    ):
        raise _too_large(max_bytes)
    staged = StagedUpload(fields={})
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValidationFailed("nested multipart is not supported")
            if part.name == "module":
                if staged.path is not None:
                    raise ValidationFailed(
                        "only one module per upload", details={"field": "module"}
                    )
                await _stream_to_staging(part, staging_dir, max_bytes, staged)
            elif part.name in staged.fields:
                raise InvalidMultipart(
                    f"field {part.name} appears twice", details={"field": part.name}
                )
            elif part.name:
                staged.fields[part.name] = await _read_field(part)
    except BaseException:
        staged.discard()
        raise
    if staged.path is None:
        raise ValidationFailed("the module file field is missing", details={"field": "module"})
    return staged


async def _read_field(part: BodyPartReader) -> str:
    """A small text field, refused as soon as it outgrows ``FIELD_LIMIT``."""
    value = bytearray()
    while chunk := await part.read_chunk(FIELD_LIMIT):
        value += chunk
        if len(value) > FIELD_LIMIT:
            raise ValidationFailed(f"field {part.name} is too long", details={"field": part.name})
    return bytes(value).decode("utf-8", errors="replace").strip()


async def _stream_to_staging(
    part: BodyPartReader, staging_dir: Path, max_bytes: int, staged: StagedUpload
) -> None:
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".wasm", dir=staging_dir)
    staged.path = Path(name)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as handle:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(_sync, handle)
    staged.size = size
    staged.sha256 = digest.hexdigest()


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"module exceeds the upload limit of {max_bytes // (1024 * 1024)} MiB",
        details={"max_bytes": max_bytes},
    )
