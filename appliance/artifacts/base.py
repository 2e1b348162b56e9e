"""The artifact store interface: immutable objects under the seed's key layout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


class ArtifactExists(Exception):
    """An object already lives under the key; artifacts are never overwritten."""


class ArtifactMissing(Exception):
    """No object under the key."""


class ArtifactStore(Protocol):
    async def put_new(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key``, refusing to replace an object.

        Raises :class:`ArtifactExists` when the key is taken, so that two
        concurrent uploads of one (name, version) can never mix their bytes.
        """
        ...

    def local_path(self, key: str) -> Path | None:
        """A path the server may ``sendfile`` from, when the store is local."""
        ...

    def read(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Stream the object's bytes; raises :class:`ArtifactMissing`."""
        ...

    async def delete(self, key: str) -> None: ...

    async def ping(self) -> None:
        """Raise when the store is unreachable (for ``/readyz``)."""
        ...

    async def close(self) -> None: ...
