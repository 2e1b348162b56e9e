"""The control plane's long-lived objects, built once per app in a cleanup context."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from appliance.artifacts import ArtifactStore
from appliance.auth import Authority
from appliance.config import ServeConfig
from appliance.fast_poll import PollFastPath
from appliance.fleet_cache import FleetCache
from appliance.generation_watch import GenerationWatch
from appliance.liveness import LivenessBuffer
from appliance.metrics import Metrics
from appliance.signing import UrlSigner
from appliance.store.store import Store
from appliance.sync_service import SyncService
from appliance.upload_claims import UploadClaims


@dataclass
class Services:
    config: ServeConfig
    store: Store
    artifacts: ArtifactStore
    authority: Authority
    signer: UrlSigner
    sync: SyncService
    metrics: Metrics
    uploads: UploadClaims
    cache: FleetCache
    liveness: LivenessBuffer
    watch: GenerationWatch
    fast_poll: PollFastPath


SERVICES = web.AppKey("services", Services)
METRICS = web.AppKey("metrics", Metrics)
CONFIG = web.AppKey("config", ServeConfig)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
