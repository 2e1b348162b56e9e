"""The control-plane application factory.

``make_app(config)`` builds an aiohttp app whose every resource (data-dir
lock, database, artifact store, services) lives in a ``cleanup_ctx``: tests run
the same app in process, ``edgesync serve`` runs it under ``web.run_app``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from appliance.api import setup_routes
from appliance.artifacts import open_artifact_store
from appliance.auth import Authority
from appliance.config import ServeConfig
from appliance.fast_poll import PollFastPath
from appliance.fleet_cache import FleetCache, TargetSource
from appliance.generation_watch import ChangeFeed, GenerationWatch
from appliance.liveness import LivenessBuffer
from appliance.metrics import Metrics
from appliance.middleware import MIDDLEWARES
from appliance.push.service import push_ctx
from appliance.rollouts.engine import rollouts_ctx
from appliance.services import CONFIG, METRICS, SERVICES, Services
from appliance.signing import UrlSigner
from appliance.store.db import open_database
from appliance.store.records import Target
from appliance.store.store import Store
from appliance.sync_service import SyncService
from appliance.upload_claims import UploadClaims
from edgesync.errors import EdgesyncError

log = logging.getLogger("edgesync.serve")

JSON_BODY_LIMIT = 4 * 1024 * 1024


def make_app(config: ServeConfig) -> web.Application:
    config.validate()
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=JSON_BODY_LIMIT)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_data_dir_ctx)
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(push_ctx)  # MQTT broker and notifier, when enabled
    app.cleanup_ctx.append(rollouts_ctx)  # every replica's rollout engine loop
    setup_routes(app)
    return app


async def _data_dir_ctx(app: web.Application) -> AsyncIterator[None]:
    """Create the data dir (0700) and hold its lock: one serve process per embedded store.

    First of every resource, so a second server on the same dir fails before it
    writes anything. The dir holds the admin token and the database with both
    signing keys: it is its owner's alone, whatever the umask, also when an older
    version or a hand made it wider.
    """
    config = app[CONFIG]
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(config.data_dir.stat().st_mode) & 0o077:
        try:
            config.data_dir.chmod(0o700)
        except PermissionError:
            log.warning("%s is readable by other users and not ours to change", config.data_dir)
    embedded = config.database_url is None or config.database_url.startswith("sqlite:")
    handle = None
    if embedded:
        fd = os.open(config.data_dir / ".serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise EdgesyncError(
                f"another edgesync serve is using {config.data_dir}; "
                "the embedded SQLite store allows one server per data dir",
                code="DATA_DIR_LOCKED",
            ) from exc
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    metrics = app[METRICS]
    database = await open_database(config.resolved_database_url)
    try:
        store = Store(database, on_retry=metrics.db_serialization_retries.inc)
        await store.migrate()
        artifacts = await open_artifact_store(config.resolved_artifact_url)
        try:
            signing_key = await store.secret(
                "node_token_signing_key", lambda: secrets.token_hex(32)
            )
            url_key = await store.secret("download_url_key", lambda: secrets.token_hex(32))
            signer = UrlSigner(bytes.fromhex(url_key), config.url_ttl_seconds)
            cache = FleetCache(
                store.node_stamp,
                _target_source(store),
                shared=database.shared,
                # Cached plans carry signed URLs: never serve one past a third of their TTL.
                plan_ttl_seconds=min(config.plan_cache_ttl_seconds, signer.ttl_seconds / 3),
            )
            store.add_commit_listener(cache.committed)
            authority = Authority(
                store,
                metrics,
                cache.stamp,
                admin_token=load_admin_token(config),
                signing_key=signing_key,
                node_token_ttl=timedelta(days=config.node_token_ttl_days),
                bcrypt_rounds=config.bcrypt_rounds,
            )
            sync = SyncService(
                store,
                cache,
                signer,
                metrics,
                delivery=config.artifact_delivery,
                presign=artifacts.presigned_url,
                artifact_public_url=config.artifact_public_url,
            )
            watch = GenerationWatch(
                store.generation,
                cache.saw_generation,
                feed=_change_feed(store, cache) if database.shared else None,
                clock=cache.now,
            )
            store.add_commit_listener(lambda tx: watch.wake() if tx.bumped else None)
            liveness = LivenessBuffer(store.record_liveness)
            fast_poll = PollFastPath(authority, cache, liveness)
            uploads = UploadClaims(store, config.data_dir)
            await uploads.start()
            watch.start()
            liveness.start()
            try:
                app[SERVICES] = Services(
                    config,
                    store,
                    artifacts,
                    authority,
                    signer,
                    sync,
                    metrics,
                    uploads,
                    cache,
                    liveness,
                    watch,
                    fast_poll,
                )
                metrics.watch_poll_path(cache, liveness, fast_poll)
                yield
            finally:
                await liveness.close()  # what is pending is written before the database closes
                await watch.close()
                await uploads.close()
        finally:
            await artifacts.close()
    finally:
        await database.close()


def _target_source(store: Store) -> TargetSource:
    """A release's target (``release_target``), or the fleet-wide one for None."""

    async def target(release_id: str | None) -> Target:
        if release_id is None:
            return await store.target()
        return await store.release_target(release_id)

    return target


def _change_feed(store: Store, cache: FleetCache) -> ChangeFeed:
    """The node change feed this replica's watch reads (shared databases only)."""
    return ChangeFeed(store.node_change_feed().read, cache.saw_changes, store.prune_node_changes)


def load_admin_token(config: ServeConfig) -> str:
    """``EDGESYNC_ADMIN_TOKEN`` (via config), else ``<data-dir>/admin-token``, created once."""
    if config.admin_token:
        return config.admin_token
    path = admin_token_path(config.data_dir)
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    log.info("generated an admin token in %s (mode 0600)", path)
    return token


def admin_token_path(data_dir: Path) -> Path:
    return data_dir / "admin-token"
