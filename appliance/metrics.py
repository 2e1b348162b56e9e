"""Prometheus metrics of one control-plane app (a registry per app, so that
several apps in one test process never share counters)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SYNC_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._request_children: dict[tuple[str, str, int], Any] = {}
        r = self.registry
        self.nodes = Gauge("edgesync_nodes", "Registered nodes by status", ["status"], registry=r)
        self.syncs = Counter(
            "edgesync_syncs", "Sync acks recorded, by outcome", ["status"], registry=r
        )
        self.sync_latency = Histogram(
            "edgesync_sync_latency_seconds",
            "From plan handed out to ack received",
            ["status"],
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.plans = Counter(
            "edgesync_plans_served", "Plan responses, by kind", ["kind"], registry=r
        )
        self.download_bytes = Counter(
            "edgesync_artifact_download_bytes", "Artifact bytes served", registry=r
        )
        self.download_seconds = Histogram(
            "edgesync_artifact_download_seconds",
            "Time to serve one artifact download",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upload_bytes = Counter(
            "edgesync_artifact_upload_bytes", "Artifact bytes accepted", registry=r
        )
        self.api_latency = Histogram(
            "edgesync_api_request_seconds",
            "API request latency by route",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_connections = Gauge(
            "edgesync_db_connections_in_use", "Database connections in use", registry=r
        )
        self.db_pool_size = Gauge(
            "edgesync_db_pool_connections", "Database connections open (pool size)", registry=r
        )
        self.db_pool_max = Gauge(
            "edgesync_db_pool_max_connections", "Largest size the pool may grow to", registry=r
        )
        self.db_pool_waiting = Gauge(
            "edgesync_db_pool_waiting", "Requests waiting for a database connection", registry=r
        )
        self.db_serialization_retries = Counter(
            "edgesync_db_serialization_retries",
            "Write transactions run again after a serialization conflict (SQLSTATE 40001)",
            registry=r,
        )
        self.bcrypt_calls = Counter(
            "edgesync_bcrypt_calls",
            "bcrypt hash or verify calls (never on the poll path)",
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one API request; the labelled child is looked up once per label set
        (prometheus-client's ``labels()`` costs microseconds: this is the poll path)."""
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.api_latency.labels(method, route, str(status))
            self._request_children[key] = child
        child.observe(seconds)
