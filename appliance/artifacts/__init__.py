"""Artifact stores (where WASM modules live), chosen by URL scheme."""

from __future__ import annotations

from pathlib import Path

from appliance.artifacts.base import ArtifactMissing, ArtifactStore, ArtifactStoreUnavailable
from appliance.artifacts.location import is_s3_url

__all__ = [
    "ArtifactMissing",
    "ArtifactStore",
    "ArtifactStoreUnavailable",
    "open_artifact_store",
]


async def open_artifact_store(url: str) -> ArtifactStore:
    """The store an artifact URL names.

    ``file:///path`` (or a bare path): the embedded folder store.
    ``s3://``, ``minio://``, ``http://``, ``https://``: MinIO or any S3 endpoint
    (URL form in :mod:`appliance.artifacts.location`).
    """
    if url.startswith("file://") or "://" not in url:
        from appliance.artifacts.folder import FolderArtifactStore

        return FolderArtifactStore(Path(url.removeprefix("file://")))
    if is_s3_url(url):
        try:
            from appliance.artifacts.s3 import S3ArtifactStore
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in ("minio", "urllib3", "certifi"):
                raise
            raise ValueError(
                "the S3 artifact store needs the minio package (pip install 'edgesync[s3]')"
            ) from exc
        store: ArtifactStore = await S3ArtifactStore.open(url)
        return store
    raise ValueError(f"unsupported artifact URL scheme: {url.split(':', 1)[0]!r}")
