"""Configuration of ``edgesync serve``: one dataclass, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServeConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path("edgesync-data"))
    database_url: str | None = None
    artifact_url: str | None = None
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_upload_mb: int = 64
    poll_interval_seconds: int = 30
    url_ttl_seconds: int = 900
    admin_token: str | None = None
    node_token_ttl_days: int = 90
    plan_cache_ttl_seconds: int = 300
    bcrypt_rounds: int = 12
    access_log: bool = True
    # Plans point nodes at the artifact store itself ("direct": S3 presigned
    # URLs) or at this control plane ("proxy"), for sites whose nodes cannot
    # reach the store. The folder store always proxies.
    artifact_delivery: str = "direct"
    # MinIO/S3 by the seed's variables, when no --artifact-url is given.
    minio_endpoint: str | None = None
    minio_access_key: str | None = None
    minio_secret_key: str | None = None
    minio_secure: bool = False

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite://{(self.data_dir / 'edgesync.db').resolve()}"

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or f"file://{(self.data_dir / 'artifacts').resolve()}"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def validate(self) -> None:
        """Refuse impossible settings with one clear message each."""
        if self.max_upload_mb < 1:
            raise ValueError("--max-upload-mb must be at least 1")
        if self.poll_interval_seconds < 1:
            raise ValueError("--poll-interval must be at least 1 second")
        if self.url_ttl_seconds < 10:
            raise ValueError("--url-ttl must be at least 10 seconds")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.artifact_delivery not in ("direct", "proxy"):
            raise ValueError("--artifact-delivery must be direct or proxy")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("EDGESYNC_ADMIN_TOKEN must be at least 16 characters")
