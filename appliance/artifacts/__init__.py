"""Artifact stores (where WASM modules live), chosen by URL scheme."""

from __future__ import annotations

from pathlib import Path

from appliance.artifacts.base import ArtifactMissing, ArtifactStore

__all__ = ["ArtifactMissing", "ArtifactStore", "open_artifact_store"]


async def open_artifact_store(url: str) -> ArtifactStore:
    """``file:///path`` (or a bare path) for the embedded folder store."""
    if url.startswith("file://") or "://" not in url:
        from appliance.artifacts.folder import FolderArtifactStore

        return FolderArtifactStore(Path(url.removeprefix("file://")))
    if url.startswith(("s3://", "minio://", "http://", "https://")):
        try:
            from appliance.artifacts.s3 import S3ArtifactStore  # type: ignore[import-not-found]
        except ImportError as exc:  # pragma: no cover - arrives with the backends issue
            raise ValueError("the S3 artifact store is not available in this build") from exc
        store: ArtifactStore = await S3ArtifactStore.open(url)
        return store
    raise ValueError(f"unsupported artifact URL scheme: {url.split(':', 1)[0]!r}")
