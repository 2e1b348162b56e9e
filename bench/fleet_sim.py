"""The fleet simulator (benchmark 9, `bench/fleet.py`): enrol N nodes, drive their intervals.

Enrolls N nodes (``serve --bcrypt-cost 4``: registration checks the enrollment token's
bcrypt hash once per node), gives each its own token and ETag, then drives open-loop
node intervals with the raw HTTP client of ``bench/fleet_load.py``: each node on a
jittered schedule, on a new connection per interval or a kept one. ``serve`` (one
process, or several replicas on a shared PostgreSQL) is pinned to core 0, this
process to core 1 (``taskset``, as the issue's measurements); PostgreSQL's backends
are not pinned, their CPU is read from ``/proc`` and counted.

Phases: a probe at a rate the box can drive (CPU per node interval, hence serve's
capacity: the rate that fills its core); 70 % of that capacity (the latency goal);
1.5x capacity for 20 s; back to 70 % (the recovery). The node interval is what a
converged agent sends per poll interval: ``--interval-kind poll`` (one ``GET …/sync``
answered 304; ``agent/loop.py`` after issue 10 item 1) or ``pair`` (``POST
…/heartbeat`` and then the poll: agents before it).

Its report and command line: ``bench/fleet.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import resource
import ssl as tls
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    BenchError,
    Server,
    busy_seconds,
    edgesync_serve,
    rss_bytes,
    wait_for_quiet,
)
from bench.fleet_load import Fleet, HttpConnection, Outcome, build_request, connect, schedule
from bench.support import cpu_with_children

GOAL_CPU_US = 420.0  # serve + database per node interval (issue 10)
GOAL_P99_MS = 50.0  # at 70 % load
CORES_AT_70 = 1.4  # 70 % of this 2-core box
AGENT_INTERVAL_S = 30.0


@dataclass
class FleetSettings:
    nodes: int = 100_000
    backend: str = "sqlite"  # or "postgres"
    replicas: int = 1
    connections: str = "new"  # "new" per interval, or "kept"
    interval_kind: str = "poll"  # "poll" (one request) or "pair" (heartbeat + poll)
    probe_rate: float = 1500.0
    probe_seconds: float = 15.0
    steady_seconds: float = 30.0
    overload_seconds: float = 20.0
    recovery_seconds: float = 20.0
    server_cpu: int = 0
    client_cpu: int = 1
    seed: int = 10

    @classmethod
    def quick(cls, backend: str = "sqlite") -> FleetSettings:
        return cls(
            nodes=2_000, backend=backend, replicas=2 if backend == "postgres" else 1,
            probe_rate=800, probe_seconds=5, steady_seconds=8, overload_seconds=5,
            recovery_seconds=6,
        )  # fmt: skip


@dataclass
class Phase:
    name: str
    rate: float  # intervals a second asked for
    seconds: float
    outcome: Outcome
    serve_cpu_s: float
    db_cpu_s: float
    wall_s: float
    client_cpu_s: float = 0.0  # this load generator (core 1): was it the bottleneck?
    other_cpu_s: float = 0.0  # every other process on the box (other work disturbs)

    @property
    def done(self) -> int:
        return len(self.outcome.latencies)

    def cpu_us(self, which: str = "all") -> float:
        cpu = {"serve": self.serve_cpu_s, "db": self.db_cpu_s}.get(
            which, self.serve_cpu_s + self.db_cpu_s
        )
        return cpu * 1e6 / self.done if self.done else float("nan")

    @property
    def unqueued(self) -> bool:
        """Driven without a queue: no errors, and p99 under a second (a phase the box
        could not keep up with queues for tens of seconds and times out)."""
        return (
            self.done > 0
            and not self.outcome.errors
            and self.outcome.percentiles_ms()["p99"] < 1000.0
        )

    def recovered_after_s(self, limit_ms: float = GOAL_P99_MS) -> float | None:
        """Seconds into the phase after which every second's p99 stays under ``limit_ms``."""
        from bench.support import percentile

        seconds = sorted(self.outcome.by_second)
        bad = [s for s in seconds if percentile(self.outcome.by_second[s], 0.99) * 1000 > limit_ms]
        if not bad:
            return 0.0
        return None if bad[-1] == seconds[-1] else float(bad[-1] + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "rate": self.rate, "seconds": self.seconds,
            "scheduled": self.outcome.scheduled, "done": self.done,
            "achieved_rate": self.done / self.wall_s if self.wall_s else 0.0,
            "errors": self.outcome.errors, "latency_ms": self.outcome.percentiles_ms(),
            "late_start_max_ms": self.outcome.late_start_max * 1000,
            "cpu_us_per_interval": {w: self.cpu_us(w) for w in ("serve", "db", "all")},
            "client_cpu_s": self.client_cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "serve_cpu_s": self.serve_cpu_s,
            "db_cpu_s": self.db_cpu_s,
            "recovered_after_s": self.recovered_after_s(),
        }  # fmt: skip


@dataclass
class FleetResult:
    settings: FleetSettings
    enroll_seconds: float = 0.0
    rss_before: int = 0  # all replicas, before enrolling
    rss_after: int = 0  # all replicas, after the runs
    capacity: float = 0.0  # intervals/s that fill serve's core (from the probe)
    phases: list[Phase] = field(default_factory=list)
    commit: str = ""
    enrol_anomalies: dict[str, int] = field(default_factory=dict)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    @property
    def rss_per_node(self) -> float:
        return (self.rss_after - self.rss_before) / self.settings.nodes

    @property
    def measured(self) -> Phase:
        """The phase the CPU figure comes from: the fastest of ``probe`` and ``steady``
        driven without a queue (timeouts and retransmits of a queued phase inflate its
        CPU per interval), else the cheaper of the two."""
        candidates = [p for p in self.phases if p.name in ("probe", "steady")]
        clean = [p for p in candidates if p.unqueued]
        if clean:
            return max(clean, key=lambda p: p.rate)
        return min(candidates, key=lambda p: p.cpu_us())

    @property
    def cpu_us(self) -> float:
        """CPU per node interval, serve + database, at a rate this box drives."""
        return self.measured.cpu_us()

    @property
    def projected_nodes(self) -> float:
        """Nodes at 30 s intervals the box carries at 70 % of its 2 cores."""
        return CORES_AT_70 / (self.cpu_us / 1e6) * AGENT_INTERVAL_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "enroll_seconds": self.enroll_seconds,
            "rss_before": self.rss_before, "rss_after": self.rss_after,
            "rss_per_node": self.rss_per_node, "capacity": self.capacity,
            "cpu_us_per_interval": self.cpu_us, "projected_nodes_at_30s": self.projected_nodes,
            "phases": [p.to_dict() for p in self.phases], "commit": self.commit,
            "enrol_anomalies": self.enrol_anomalies,
        }  # fmt: skip


# -- the control plane ----------------------------------------------------------------


@contextlib.contextmanager
def control_plane(workdir: Path, settings: FleetSettings) -> Iterator[tuple[list[Server], Any]]:
    """The serve replicas (pinned) and, on PostgreSQL, ``(monitor, database)`` for CPU."""
    args = ["--bcrypt-cost", "4"]
    with contextlib.ExitStack() as stack:
        database: Any = None
        if settings.backend == "postgres":
            from bench.poll_postgres import scratch_database

            url, name, monitor = stack.enter_context(scratch_database())
            args += ["--database-url", url]
            database = (monitor, name)
        servers = [
            stack.enter_context(
                edgesync_serve(workdir, cpu=settings.server_cpu, extra_args=args, access_log=True)
            )
            for _ in range(settings.replicas)
        ]
        yield servers, database


def db_cpu(database: Any) -> float:
    if database is None:
        return 0.0
    from bench.poll_postgres import backend_cpu

    return sum(backend_cpu(*database).values())


def serve_cpu(servers: list[Server]) -> float:
    return sum(cpu_with_children(s.pid) for s in servers)


# -- enrolment -------------------------------------------------------------------------


@dataclass
class Node:
    node_id: str
    token: str
    etag: str
    replica: int


async def enroll(
    servers: list[Server],
    count: int,
    concurrency: int = 32,
    ssl: tls.SSLContext | None = None,
    anomalies: dict[str, int] | None = None,
) -> list[Node]:
    """Register ``count`` nodes (round-robin over the replicas), then poll each once for
    its ETag: the fleet is converged on the (empty) fleet target.

    Each worker has its own enrollment token: one token's use counter is one row, and
    32 registrations at once on it abort each other on PostgreSQL (503 after the
    store's retries). A 503 is retried after a pause, as an agent does."""
    first = servers[0]
    nodes: list[Node | None] = [None] * count
    todo = iter(range(count))

    async def send(connection: HttpConnection, raw: bytes, what: str) -> int:
        for attempt in range(20):
            status = await connection.request(raw)
            if status != 503:
                return status
            await asyncio.sleep(0.05 * (attempt + 1))
        raise BenchError(f"{what}: HTTP 503 twenty times: {connection.body[:200]!r}")

    async def worker(replica: int) -> None:
        # Workers take nodes from one queue: any of them may register up to all of them.
        enrollment = await _enrollment_token(first, count, ssl)
        server = servers[replica % len(servers)]
        host, port = server.base.split("://")[1].split(":")
        connection = await connect(host, int(port), None, ssl)
        for index in todo:
            body = json.dumps(
                {"name": f"sim-{index}", "region": "bench", "enrollment_token": enrollment}
            ).encode()
            raw = build_request("POST", "/api/v1/nodes/register", host, {}, body)
            status = await send(connection, raw, f"register node {index}")
            if status != 201:
                raise BenchError(f"register node {index}: HTTP {status} {connection.body[:200]!r}")
            answer = json.loads(connection.body)
            auth = {"Authorization": f"Bearer {answer['token']}"}
            path = f"/api/v1/nodes/{answer['node_id']}/sync"
            poll = build_request("GET", path, host, auth)
            status = await send(connection, poll, "first poll")
            for _ in range(5):
                if status != 401:
                    break
                # A server bug, not the fleet's: counted and reported, then retried.
                if anomalies is not None:
                    kind = f"401 on a new node's first poll: {connection.body[:160]!r}"
                    anomalies[kind] = anomalies.get(kind, 0) + 1
                await asyncio.sleep(0.2)
                status = await send(connection, poll, "first poll")
            etag = connection.header("etag")
            if status != 200 or etag is None:
                raise BenchError(
                    f"first poll of node {index}: HTTP {status} {connection.body[:300]!r}"
                )
            nodes[index] = Node(answer["node_id"], answer["token"], etag, replica % len(servers))
        connection.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return [node for node in nodes if node is not None]


async def _enrollment_token(server: Server, count: int, ssl: tls.SSLContext | None) -> str:
    host, port = server.base.split("://")[1].split(":")
    connection = await connect(host, int(port), None, ssl)
    body = json.dumps({"max_uses": count, "ttl_seconds": 86400}).encode()
    raw = build_request("POST", "/api/v1/enrollment-tokens", host, server.admin_headers(), body)
    status = await connection.request(raw)
    connection.close()
    if status != 201:
        raise BenchError(f"create enrollment token: HTTP {status} {connection.body[:200]!r}")
    return str(json.loads(connection.body)["token"])


def interval_requests(node: Node, host: str, kind: str) -> list[bytes]:
    """What one converged agent sends in one poll interval (``heartbeat_request`` aside:
    with ``poll``, the agent adds a heartbeat only every ``HEARTBEAT_EVERY_INTERVALS``)."""
    from agent.api import poll_headers
    from edgesync.protocol import NodeState

    auth = {"Authorization": f"Bearer {node.token}"}
    # Exactly the agent's poll: liveness (version, state digest) and the plan's ETag.
    headers = {**auth, **poll_headers(node.etag, NodeState())}
    poll = build_request("GET", f"/api/v1/nodes/{node.node_id}/sync", host, headers)
    return [poll] if kind == "poll" else [heartbeat_request(node, host), poll]


def heartbeat_request(node: Node, host: str) -> bytes:
    """The agent's ``POST …/heartbeat`` (``agent.api.ControlPlane.heartbeat``'s body)."""
    from agent import __version__ as agent_version
    from edgesync.protocol import NodeState

    body = {"agent_version": agent_version, "state_etag": NodeState().digest()}
    auth = {"Authorization": f"Bearer {node.token}"}
    path = f"/api/v1/nodes/{node.node_id}/heartbeat"
    return build_request("POST", path, host, auth, json.dumps(body).encode())


def heartbeat_every(kind: str) -> int:
    """Intervals per heartbeat: every one for ``pair``; for ``poll``, the agent's own
    ``agent.loop.HEARTBEAT_EVERY_INTERVALS`` (a converged node with nothing new)."""
    if kind == "pair":
        return 0  # the heartbeat is already in every interval's requests
    from agent.loop import HEARTBEAT_EVERY_INTERVALS

    return HEARTBEAT_EVERY_INTERVALS


# -- the run ---------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # serve inherits it
    if needed > hard:
        raise BenchError(
            f"{needed:,} kept connections need as many file descriptors in serve and here;"
            f" ulimit -n is {hard:,}: use fewer nodes or --connections new"
        )


async def drive(
    fleet: Fleet, rate: float, seconds: float, nodes: int, rng: random.Random
) -> tuple[Outcome, float]:
    start = time.monotonic() + 0.2
    events = schedule(nodes, rate, start, seconds, rng)
    outcome = await fleet.run(events, start)
    return outcome, time.monotonic() - start


async def simulate(workdir: Path, settings: FleetSettings, log: Any = print) -> FleetResult:
    if settings.connections == "kept":
        raise_fd_limit(settings.nodes + 2_000)
    else:
        raise_fd_limit(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {settings.client_cpu})
    result = FleetResult(settings, commit=_commit())
    rng = random.Random(settings.seed)
    with control_plane(workdir, settings) as (servers, database):
        result.rss_before = sum(rss_bytes(s.pid) or 0 for s in servers)
        started = time.monotonic()
        nodes = await enroll(servers, settings.nodes, anomalies=result.enrol_anomalies)
        result.enroll_seconds = time.monotonic() - started
        log(f"  enrolled {len(nodes):,} nodes in {result.enroll_seconds:.0f} s")
        hosts = [s.base.removeprefix("http://").split(":") for s in servers]
        fleet = Fleet(
            [(HOST, int(hosts[n.replica][1])) for n in nodes],
            [interval_requests(n, HOST, settings.interval_kind) for n in nodes],
            keep=settings.connections == "kept",
            expected=[304] if settings.interval_kind == "poll" else [200, 304],
            heartbeats=[heartbeat_request(n, HOST) for n in nodes],
            heartbeat_every=heartbeat_every(settings.interval_kind),
        )
        if fleet.keep:
            await fleet.connect_all()
            log(f"  {len(nodes):,} kept connections open")

        async def phase(name: str, rate: float, seconds: float) -> Phase:
            cpu0, db0, own0 = serve_cpu(servers), db_cpu(database), time.process_time()
            busy0 = busy_seconds()
            outcome, wall = await drive(fleet, rate, seconds, len(nodes), rng)
            done = Phase(
                name, rate, seconds, outcome, serve_cpu(servers) - cpu0, db_cpu(database) - db0,
                wall, time.process_time() - own0,
            )  # fmt: skip
            ours = done.serve_cpu_s + done.db_cpu_s + done.client_cpu_s
            done.other_cpu_s = max(0.0, busy_seconds() - busy0 - ours)
            pct = outcome.percentiles_ms()
            log(
                f"  {name:9s} {rate:7.0f}/s asked, {done.done / wall:7.0f}/s done;"
                f" p50 {pct['p50']:.1f} p99 {pct['p99']:.1f} p99.9 {pct['p999']:.1f} ms;"
                f" CPU/interval serve {done.cpu_us('serve'):.0f} + db {done.cpu_us('db'):.0f} µs;"
                f" errors {sum(outcome.errors.values())}; cores: serve"
                f" {done.serve_cpu_s / wall:.2f}, db {done.db_cpu_s / wall:.2f},"
                f" generator {done.client_cpu_s / wall:.2f}, others {done.other_cpu_s / wall:.2f}"
            )
            result.phases.append(done)
            return done

        wait_for_quiet(10, 0.3)  # other work on the box skews every figure: give it a chance
        try:
            probe = await phase("probe", settings.probe_rate, settings.probe_seconds)
            for _ in range(2):  # a probe that queued is no measure: half the rate, again
                if probe.unqueued:
                    break
                result.phases.remove(probe)
                probe = await phase("probe", probe.rate / 2, settings.probe_seconds)
            if probe.done == 0 or probe.serve_cpu_s <= 0:
                raise BenchError(f"the probe completed no interval: {probe.outcome.errors}")
            # serve's replicas share one core: capacity is the rate that fills it.
            result.capacity = 1e6 / probe.cpu_us("serve")
            await phase("steady", 0.7 * result.capacity, settings.steady_seconds)
            await phase("overload", 1.5 * result.capacity, settings.overload_seconds)
            await phase("recovery", 0.7 * result.capacity, settings.recovery_seconds)
        finally:
            fleet.close()
        result.rss_after = sum(rss_bytes(s.pid) or 0 for s in servers)
    return result


def _commit() -> str:
    import subprocess

    from bench.common import REPO

    done = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip()[:100]
