"""``edgesync serve``: options build a :class:`ServeConfig`, then ``run(config)``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("edgesync-data"),
    show_default=True,
    help="Holds the embedded database, artifacts and the generated admin token.",
)
@click.option(
    "--database-url",
    envvar=["EDGESYNC_DATABASE_URL", "DATABASE_URL"],
    help="postgresql://… for CockroachDB/PostgreSQL; default: SQLite in the data dir.",
)
@click.option(
    "--artifact-url",
    envvar="EDGESYNC_ARTIFACT_URL",
    help="Where modules live: s3://KEY:SECRET@host:port/bucket (also minio://, http://,"
    " https://; see docs/deploy.md); default: MINIO_ENDPOINT if set, else a folder in the"
    " data dir.",
)
@click.option(
    "--artifact-delivery",
    type=click.Choice(["direct", "proxy"]),
    default="direct",
    show_default=True,
    envvar="EDGESYNC_ARTIFACT_DELIVERY",
    help="direct: nodes fetch S3 presigned URLs; proxy: through this server.",
)
@click.option(
    "--artifact-public-url",
    envvar="EDGESYNC_ARTIFACT_PUBLIC_URL",
    help="With direct delivery: nodes download URL/<storage key> (a CDN or caching proxy"
    " in front of the bucket) instead of presigned URLs; integrity rests on the plan's SHA-256.",
)
@click.option("--minio-endpoint", envvar="MINIO_ENDPOINT", help="host:port of MinIO/S3.")
@click.option("--minio-access-key", envvar="MINIO_ACCESS_KEY")
@click.option("--minio-secret-key", envvar="MINIO_SECRET_KEY")
@click.option(
    "--minio-secure/--minio-insecure",
    envvar="MINIO_SECURE",
    default=False,
    help="https to MinIO (default: http).",
)
@click.option(
    "--public-url", envvar="EDGESYNC_PUBLIC_URL", help="Base URL nodes use to reach this server."
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--max-upload-mb", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--poll-interval",
    default=30,
    show_default=True,
    type=click.IntRange(1, 86400),
    help="Seconds between agent polls, told to nodes at registration.",
)
@click.option(
    "--url-ttl",
    default=900,
    show_default=True,
    type=click.IntRange(10, 86400),
    help="Seconds a signed download URL stays valid.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.option(
    "--header-timeout",
    default=15.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds a client may take to send a request's headers (then 408, closed).",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds a client may take to send a request body, plus one per KiB received.",
)
@click.option(
    "--mqtt/--no-mqtt",
    "mqtt",
    default=None,
    envvar="MQTT_ENABLED",
    help="Push notifications over MQTT: run the embedded broker (default: off,"
    " or on when --mqtt-broker is given).",
)
@click.option(
    "--mqtt-listen",
    default="0.0.0.0:1883",
    show_default=True,
    envvar="EDGESYNC_MQTT_LISTEN",
    help="HOST:PORT of the embedded MQTT broker.",
)
@click.option(
    "--mqtt-broker",
    envvar="MQTT_BROKER",
    help="mqtt://[user:password@]host:port of an external broker (Mosquitto, EMQX)"
    " to publish to instead of running the embedded one.",
)
@click.option(
    "--mqtt-public-url",
    envvar="EDGESYNC_MQTT_PUBLIC_URL",
    help="mqtt://host:port nodes are told to connect to"
    " (default: --public-url's host, or the request's, and the listen port).",
)
@click.option(
    "--mqtt-watch-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 300),
    envvar="EDGESYNC_MQTT_WATCH_INTERVAL",
    help="Seconds between looks at the database for other replicas' changes.",
)
@click.option(
    "--rollout-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.05, 60),
    envvar="EDGESYNC_ROLLOUT_INTERVAL",
    help="Seconds between rollout evaluations (waves, timeouts, health gates).",
)
@click.option(
    "--migration-check-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5, 3600),
    envvar="EDGESYNC_MIGRATION_CHECK_TIMEOUT",
    help="Seconds the check of a proposed migration may run (in a child process).",
)
@click.option(
    "--bcrypt-cost",
    default=12,
    show_default=True,
    type=click.IntRange(4, 31),
    envvar="EDGESYNC_BCRYPT_COST",
    help="bcrypt cost of new enrollment-token hashes. For benchmarks and tests only"
    " (a fleet simulator enrolls thousands of nodes); keep 12 in production.",
)
@click.option(
    "--migration-check-memory",
    default=256,
    show_default=True,
    type=click.IntRange(128, 65536),
    envvar="EDGESYNC_MIGRATION_CHECK_MEMORY",
    help="MiB of address space the migration check's child process may use.",
)
def serve(
    host: str,
    port: int,
    data_dir: Path,
    database_url: str | None,
    artifact_url: str | None,
    artifact_delivery: str,
    artifact_public_url: str | None,
    minio_endpoint: str | None,
    minio_access_key: str | None,
    minio_secret_key: str | None,
    minio_secure: bool,
    public_url: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_upload_mb: int,
    poll_interval: int,
    url_ttl: int,
    log_level: str,
    no_access_log: bool,
    header_timeout: float,
    body_timeout: float,
    mqtt: bool | None,
    mqtt_listen: str,
    mqtt_broker: str | None,
    mqtt_public_url: str | None,
    mqtt_watch_interval: float,
    rollout_interval: float,
    migration_check_timeout: float,
    migration_check_memory: int,
    bcrypt_cost: int,
) -> None:
    """Run the control plane (REST API, artifact store, metrics)."""
    from appliance.config import ServeConfig
    from appliance.server import run

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # aiosqlite's DEBUG lines carry SQL parameters: token hashes and signing keys.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
    # amqtt logs every connection at INFO (and packets at DEBUG: CONNECT carries tokens).
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if no_access_log:
        logging.getLogger("edgesync.access").setLevel(logging.WARNING)
    config = ServeConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        artifact_url=artifact_url,
        artifact_delivery=artifact_delivery,
        artifact_public_url=artifact_public_url or None,
        minio_endpoint=minio_endpoint,
        minio_access_key=minio_access_key,
        minio_secret_key=minio_secret_key,
        minio_secure=minio_secure,
        public_url=public_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_upload_mb=max_upload_mb,
        poll_interval_seconds=poll_interval,
        url_ttl_seconds=url_ttl,
        header_timeout_seconds=header_timeout,
        body_timeout_seconds=body_timeout,
        admin_token=os.environ.get("EDGESYNC_ADMIN_TOKEN") or None,
        mqtt_enabled=mqtt,
        mqtt_listen=mqtt_listen,
        mqtt_broker=mqtt_broker or None,
        mqtt_public_url=mqtt_public_url or None,
        mqtt_watch_interval=mqtt_watch_interval,
        migration_check_timeout=migration_check_timeout,
        migration_check_memory_mb=migration_check_memory,
        rollout_interval=rollout_interval,
        bcrypt_rounds=bcrypt_cost,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    # Failures to start (a busy port, a locked data dir, a database) raise with their own
    # code; edgesync.cli renders them as one line.
    run(config)
