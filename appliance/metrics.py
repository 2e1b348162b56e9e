"""Prometheus metrics of one control-plane app (a registry per app, so that
several apps in one test process never share counters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from appliance.fast_poll import PollFastPath
    from appliance.fleet_cache import FleetCache
    from appliance.liveness import LivenessBuffer

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SYNC_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._request_children: dict[tuple[str, str, int], Any] = {}
        # Called first on every scrape: hot paths count in plain ints and these
        # move the counts into their Prometheus counters (registered first, so a
        # scrape sees them moved).
        self._before_scrape: list[Callable[[], None]] = []
        self.registry.register(_BeforeScrape(self._before_scrape))
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
        self.rollouts = Gauge("edgesync_rollouts", "Rollouts by state", ["state"], registry=r)
        self.nodes_per_release = Gauge(
            "edgesync_nodes_per_release",
            "Nodes whose target is each release (by release number)",
            ["release"],
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

    def watch_poll_path(
        self, cache: FleetCache, liveness: LivenessBuffer, fast: PollFastPath
    ) -> None:
        """Export the poll path's plain counters, read only when scraped."""
        self.registry.register(_PollPathCollector(cache, liveness, fast))
        not_modified = self.plans.labels("not_modified")
        moved = [0]

        def move_fast_polls() -> None:  # the fast path's 304s are plans served too
            served = fast.served
            not_modified.inc(served - moved[0])
            moved[0] = served

        self._before_scrape.append(move_fast_polls)


class _BeforeScrape:
    def __init__(self, hooks: list[Callable[[], None]]) -> None:
        self._hooks = hooks

    def collect(self) -> Iterator[Any]:
        for hook in self._hooks:
            hook()
        return iter(())


class _PollPathCollector:
    """Figures the poll path keeps as plain ints (a Prometheus counter's lock per
    poll would cost more than the fast path's whole answer)."""

    def __init__(self, cache: FleetCache, liveness: LivenessBuffer, fast: PollFastPath) -> None:
        self._cache = cache
        self._liveness = liveness
        self._fast = fast

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily(
            "edgesync_polls_fast_path",
            "Converged nodes' polls answered 304 from memory, before the middleware chain",
            value=self._fast.served,
        )
        yield CounterMetricFamily(
            "edgesync_liveness_rows_written",
            "Node liveness rows written by the batched flush",
            value=self._liveness.flushed_rows,
        )
        yield GaugeMetricFamily(
            "edgesync_liveness_pending",
            "Nodes seen alive and not yet written (flushed about once a second)",
            value=self._liveness.pending,
        )
        entries = GaugeMetricFamily(
            "edgesync_fleet_cache_entries", "Entries in the poll path's cache", labels=["kind"]
        )
        for kind, size in self._cache.sizes().items():
            entries.add_metric([kind], size)
        yield entries
