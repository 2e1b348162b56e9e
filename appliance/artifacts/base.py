"""The artifact store interface: immutable objects under the seed's key layout."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Protocol


class ArtifactMissing(Exception):
    """No object under the key."""


class ArtifactStoreUnavailable(RuntimeError):
    """The store cannot be reached, timed out or refused the request.

    The API answers 503 ``SERVICE_UNAVAILABLE`` (retryable, with ``Retry-After``);
    the message is for logs and never carries a secret.
    """


class ArtifactStore(Protocol):
    async def put(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key``, streamed, replacing any object.

        Only the upload that reserved ``(name, version)`` in the metadata store
        writes its key, so replacing is safe: it only ever replaces the
        leftovers of a crashed upload.
        """
        ...

    def local_path(self, key: str) -> Path | None:
        """A path the server may ``sendfile`` from, when the store is local."""
        ...

    def presigned_url(self, key: str, ttl_seconds: int) -> str | None:
        """A URL nodes can fetch the object from directly (S3 presigned GET), or
        None when the store has none and the control plane serves the bytes."""
        ...

    def read(self, key: str, chunk_size: int = 256 * 1024) -> AsyncGenerator[bytes, None]:
        """Stream the object's bytes; raises :class:`ArtifactMissing`."""
        ...

    async def delete(self, key: str) -> None: ...

    async def ping(self) -> None:
        """Raise when the store is unreachable (for ``/readyz``)."""
        ...

    async def close(self) -> None: ...
