"""Configuration of ``edgesync serve``: one dataclass, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.artifacts.location import S3Location, is_s3_url, minio_url, with_credentials


@dataclass
class ServeConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path("edgesync-data"))
    database_url: str | None = None
    # May carry S3 credentials: kept out of repr (and so out of any log line).
    artifact_url: str | None = field(default=None, repr=False)
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_upload_mb: int = 64
    poll_interval_seconds: int = 30
    url_ttl_seconds: int = 900
    admin_token: str | None = None
    node_token_ttl_days: int = 90
    plan_cache_ttl_seconds: int = 300
    # bcrypt cost of new enrollment-token hashes (--bcrypt-cost: lower only for
    # benchmarks and tests, which enroll thousands of nodes).
    bcrypt_rounds: int = 12
    access_log: bool = True
    # Slow clients (edgesync.http_server.ReadDeadlines): seconds for a request's
    # header block; seconds for its body, plus one per body_min_rate bytes received.
    header_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 30.0
    body_min_rate: int = 1024
    # Plans point nodes at the artifact store itself ("direct": S3 presigned
    # URLs) or at this control plane ("proxy"), for sites whose nodes cannot
    # reach the store. The folder store always proxies.
    artifact_delivery: str = "direct"
    # With direct delivery: nodes download ``<this>/<storage key>`` (a CDN or caching
    # proxy in front of the bucket) instead of presigned URLs; the plan's SHA-256
    # is what they trust.
    artifact_public_url: str | None = None
    # MinIO/S3 by the seed's variables, when no --artifact-url is given.
    minio_endpoint: str | None = None
    minio_access_key: str | None = None
    minio_secret_key: str | None = field(default=None, repr=False)
    minio_secure: bool = False
    # MQTT push (docs/mqtt.md). None: on exactly when an external broker is named.
    mqtt_enabled: bool | None = None
    # The embedded broker's listener (when no external broker is named).
    mqtt_listen: str = "0.0.0.0:1883"
    # An external broker to publish to instead; may carry credentials: not in repr.
    mqtt_broker: str | None = field(default=None, repr=False)
    # What nodes are told to connect to; default: derived (docs/mqtt.md).
    mqtt_public_url: str | None = None
    # Seconds between looks at the database for other replicas' changes.
    mqtt_watch_interval: float = 1.0
    # Limits of the child process that checks a proposed migration chain.
    migration_check_timeout: float = 10.0
    migration_check_memory_mb: int = 256
    # Seconds between the rollout engine's rounds (it also runs at once after an ack).
    rollout_interval: float = 5.0

    @property
    def keepalive_seconds(self) -> float:
        """How long an idle client connection stays open: longer than an agent's longest
        wait between polls (the interval + 10 % jitter), so an agent keeps one connection
        (and, under TLS, one handshake) across intervals; never under aiohttp's 75 s.
        The cost is memory per idle connection (docs/benchmarks.md, "Connections")."""
        return max(75.0, self.poll_interval_seconds * 1.1 + 15.0)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite://{(self.data_dir / 'edgesync.db').resolve()}"

    @property
    def resolved_artifact_url(self) -> str:
        """``--artifact-url``, else the ``MINIO_*`` settings, else the data-dir folder.

        An S3 URL without user info takes its keys from ``--minio-access-key``
        and ``--minio-secret-key``. The result may hold the secret key: show it
        only through :func:`appliance.artifacts.location.redact_url`.
        """
        if self.artifact_url:
            if is_s3_url(self.artifact_url):
                return with_credentials(
                    self.artifact_url, self.minio_access_key, self.minio_secret_key
                )
            return self.artifact_url
        if self.minio_endpoint:
            return minio_url(
                self.minio_endpoint,
                self.minio_access_key,
                self.minio_secret_key,
                secure=self.minio_secure,
            )
        return f"file://{(self.data_dir / 'artifacts').resolve()}"

    @property
    def mqtt_mode(self) -> str | None:
        """``"embedded"``, ``"external"``, or None when MQTT push is off."""
        if self.mqtt_enabled is False:
            return None
        if self.mqtt_broker:
            return "external"
        return "embedded" if self.mqtt_enabled else None

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def validate(self) -> None:
        """Refuse impossible settings with one clear message each."""
        if self.max_upload_mb < 1:
            raise ValueError("--max-upload-mb must be at least 1")
        if self.poll_interval_seconds < 1:
            raise ValueError("--poll-interval must be at least 1 second")
        if not 1 <= self.header_timeout_seconds <= 3600:
            raise ValueError("--header-timeout must be between 1 and 3600 seconds")
        if not 1 <= self.body_timeout_seconds <= 3600 or self.body_min_rate < 1:
            raise ValueError("--body-timeout must be between 1 and 3600 seconds")
        if self.url_ttl_seconds < 10:
            raise ValueError("--url-ttl must be at least 10 seconds")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise ValueError("--bcrypt-cost must be between 4 and 31")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.artifact_delivery not in ("direct", "proxy"):
            raise ValueError("--artifact-delivery must be direct or proxy")
        if self.artifact_public_url is not None and not self.artifact_public_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("--artifact-public-url must be an http(s) URL")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("EDGESYNC_ADMIN_TOKEN must be at least 16 characters")
        if bool(self.minio_access_key) != bool(self.minio_secret_key):
            raise ValueError("--minio-access-key and --minio-secret-key go together")
        url = self.resolved_artifact_url
        if is_s3_url(url):
            S3Location.parse(url)  # its errors never show the secret key
        if not 0.5 <= self.migration_check_timeout <= 3600:
            raise ValueError("--migration-check-timeout must be between 0.5 and 3600 seconds")
        if not 128 <= self.migration_check_memory_mb <= 65536:
            raise ValueError("--migration-check-memory must be between 128 and 65536 MiB")
        if not 0.05 <= self.rollout_interval <= 60:
            raise ValueError("--rollout-interval must be between 0.05 and 60 seconds")
        self._validate_mqtt()

    def _validate_mqtt(self) -> None:
        # amqtt does not validate its own configuration: everything it gets is checked here.
        from edgesync.mqtt import parse_broker_url, parse_listen

        parse_listen(self.mqtt_listen, "--mqtt-listen")
        if self.mqtt_broker:
            parse_broker_url(self.mqtt_broker, "--mqtt-broker")  # errors mask the password
        if self.mqtt_public_url:
            public = parse_broker_url(self.mqtt_public_url, "--mqtt-public-url")
            if public.username or public.password:
                raise ValueError(
                    "--mqtt-public-url must not carry credentials: nodes log in with their own"
                )
        if not 0.05 <= self.mqtt_watch_interval <= 300:
            raise ValueError("--mqtt-watch-interval must be between 0.05 and 300 seconds")
