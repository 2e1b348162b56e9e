"""Benchmark 10: what a kept connection costs and what it saves (issue 10, item 5).

An agent now keeps its connection to the control plane across poll intervals
(``agent/api.py``'s keep-alive, longer than the interval; serve's longer still).
The price is the server's memory for every idle connection; what it saves is a
TCP accept and, under TLS, a TLS 1.3 handshake per node per interval. Both are
measured here against one ``edgesync serve`` (default access log, pinned to core 0;
this process on core 1):

* **Memory per idle connection:** 10,000 connections (from 32 loopback source
  addresses), each having made one poll and then idle, as a kept agent connection is
  between intervals: serve's RSS growth per connection, and the kernel's TCP buffer
  memory (``/proc/net/sockstat``, pages; both ends of each loopback connection).
* **CPU per poll** with a kept connection and with a new one per poll, over plain
  HTTP and over TLS 1.3 (``serve --tls-cert/--tls-key``, an EC P-256 certificate):
  the difference is the cost of the accept, and of the handshake.

Run alone: ``.venv/bin/python bench/connections.py [--quick] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HOST, BenchError, Server, edgesync_serve, require_tools, rss_bytes
from bench.fleet_load import SOURCE_ADDRESSES, Fleet, connect, schedule
from bench.fleet_sim import Node, enroll, interval_requests, raise_fd_limit
from bench.support import Report, cpu_with_children, run_header, spawned, wait_until

KEY, HEADING = "connections", "10. Kept connections: memory and TLS handshakes"
MODES = ("http kept", "http new", "https kept", "https new")


@dataclass
class ConnSettings:
    idle_connections: int = 10_000
    nodes: int = 200
    rate: float = 400.0  # polls/s for the CPU figures: what a TLS client here can drive
    seconds: float = 10.0
    server_cpu: int = 0
    client_cpu: int = 1

    @classmethod
    def quick(cls) -> ConnSettings:
        return cls(idle_connections=2_000, nodes=50, rate=200, seconds=3)


@dataclass
class ConnResult:
    settings: ConnSettings
    rss_before: int = 0
    rss_idle: int = 0
    sock_pages_before: int = 0
    sock_pages_idle: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)  # per poll, by mode
    polls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rss_per_connection(self) -> float:
        return (self.rss_idle - self.rss_before) / self.settings.idle_connections

    @property
    def kernel_per_connection(self) -> float:
        # Idle sockets hold no buffers: the count moves by a few pages either way with
        # other processes' traffic; below zero is that noise.
        pages = max(0, self.sock_pages_idle - self.sock_pages_before)
        return pages * os.sysconf("SC_PAGE_SIZE") / self.settings.idle_connections

    @property
    def handshake_us(self) -> float:
        return self.cpu_us["https new"] - self.cpu_us["https kept"]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rss_per_connection": self.rss_per_connection,
            "kernel_per_connection": self.kernel_per_connection,
            "handshake_us": self.handshake_us,
        }


def tcp_memory_pages() -> int:
    """The kernel's TCP buffer memory in pages (``/proc/net/sockstat``, ``TCP: … mem N``)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


def self_signed(directory: Path) -> tuple[Path, Path]:
    """An EC P-256 certificate for 127.0.0.1 (as ``tests/api/test_api_tls.py`` makes)."""
    require_tools("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def tls_serve(workdir: Path, cert: Path, key: Path, cpu: int) -> Iterator[Server]:
    """``edgesync serve --tls-cert --tls-key`` (bench.common's servers speak plain HTTP)."""
    from bench.common import PYTHON, free_port, pinned

    port, admin = free_port(), "connections-bench-admin-token"
    command = pinned(
        [PYTHON, "-m", "edgesync", "serve", "--host", HOST, "--port", str(port),
         "--data-dir", str(workdir / "tls-data"), "--log-level", "warning",
         "--bcrypt-cost", "4", "--tls-cert", str(cert), "--tls-key", str(key)],
        cpu,
    )  # fmt: skip
    env = dict(os.environ, EDGESYNC_ADMIN_TOKEN=admin)
    with spawned("edgesync-serve-tls", command, workdir, env=env) as process:
        context = client_context(cert)

        def ready() -> bool:
            import http.client

            connection = http.client.HTTPSConnection(HOST, port, timeout=2, context=context)
            with contextlib.suppress(OSError):
                connection.request("GET", "/healthz")
                return connection.getresponse().status == 200
            return process.process.poll() is not None

        wait_until(ready, "serve with TLS to answer", timeout=60)
        if process.process.poll() is not None:
            raise BenchError(f"serve with TLS exited:\n{process.log_tail()}")
        yield Server("edgesync-serve-tls", f"https://{HOST}:{port}", process.process,
                     process.log_path, admin_token=admin)  # fmt: skip


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


# -- the measurements -----------------------------------------------------------------


async def idle_memory(server: Server, nodes: list[Node], result: ConnResult) -> None:
    """Open ``idle_connections`` connections, one poll on each, and leave them idle."""
    port = int(server.base.rsplit(":", 1)[1])
    requests = [interval_requests(n, HOST, "poll")[0] for n in nodes]
    result.rss_before = rss_bytes(server.pid) or 0
    result.sock_pages_before = tcp_memory_pages()
    count = result.settings.idle_connections
    opened = []
    todo = iter(range(count))

    async def worker() -> None:
        for index in todo:
            connection = await connect(HOST, port, SOURCE_ADDRESSES[index % len(SOURCE_ADDRESSES)])
            if await connection.request(requests[index % len(requests)]) != 304:
                raise BenchError("a poll on an idle-to-be connection was not a 304")
            opened.append(connection)

    await asyncio.gather(*(worker() for _ in range(100)))
    await asyncio.sleep(2)  # let serve settle (its per-connection timers, freed buffers)
    result.rss_idle = rss_bytes(server.pid) or 0
    result.sock_pages_idle = tcp_memory_pages()
    for connection in opened:
        connection.close()


async def poll_cpu(
    server: Server,
    nodes: list[Node],
    mode: str,
    settings: ConnSettings,
    context: ssl.SSLContext | None,
    result: ConnResult,
) -> None:
    """Serve's CPU per poll at ``settings.rate`` with kept or new connections."""
    port = int(server.base.rsplit(":", 1)[1])
    fleet = Fleet(
        [(HOST, port)] * len(nodes),
        [interval_requests(n, HOST, "poll") for n in nodes],
        keep=mode.endswith("kept"),
        expected=[304],
        ssl=context,
    )
    if fleet.keep:
        await fleet.connect_all(concurrency=20)
    start = time.monotonic() + 0.2
    events = schedule(len(nodes), settings.rate, start, settings.seconds, random.Random(5))
    before = cpu_with_children(server.pid)
    outcome = await fleet.run(events, start)
    cpu = cpu_with_children(server.pid) - before
    fleet.close()
    done = len(outcome.latencies)
    result.polls[mode] = done
    result.errors[mode] = sum(outcome.errors.values())
    result.cpu_us[mode] = cpu * 1e6 / done if done else float("nan")


async def _measure(workdir: Path, settings: ConnSettings, log: Any) -> ConnResult:
    raise_fd_limit(settings.idle_connections + 1_000)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {settings.client_cpu})
    result = ConnResult(settings)
    cert, key = self_signed(workdir)
    context = client_context(cert)
    with edgesync_serve(
        workdir, cpu=settings.server_cpu, extra_args=["--bcrypt-cost", "4"], access_log=True
    ) as plain:
        nodes = await enroll([plain], settings.nodes)
        await idle_memory(plain, nodes, result)
        log(
            f"  {settings.idle_connections:,} idle connections: serve"
            f" +{result.rss_per_connection / 1024:.1f} KiB each, kernel"
            f" {result.kernel_per_connection / 1024:.1f} KiB each (both ends)"
        )
        for mode in ("http kept", "http new"):
            await poll_cpu(plain, nodes, mode, settings, None, result)
            log(f"  {mode:10s} {result.cpu_us[mode]:6.0f} µs serve CPU per poll")
    with tls_serve(workdir, cert, key, settings.server_cpu) as secure:
        nodes = await enroll([secure], settings.nodes, ssl=context)
        for mode in ("https kept", "https new"):
            await poll_cpu(secure, nodes, mode, settings, context, result)
            log(f"  {mode:10s} {result.cpu_us[mode]:6.0f} µs serve CPU per poll")
    return result


def run(workdir: Path, settings: ConnSettings, log: Any = print) -> ConnResult:
    return asyncio.run(_measure(workdir, settings, log))


# -- reporting -------------------------------------------------------------------------


def summary_lines(result: ConnResult) -> list[str]:
    lines = [
        f"kept connections: {result.settings.idle_connections:,} idle cost serve"
        f" {result.rss_per_connection / 1024:.1f} KiB each (kernel"
        f" {result.kernel_per_connection / 1024:.1f} KiB, both ends);"
        f" TLS 1.3 handshake {result.handshake_us:.0f} µs of serve CPU",
    ]
    for mode in MODES:
        lines.append(
            f"  {mode:10s} {result.cpu_us[mode]:6.0f} µs per poll"
            f" ({result.polls[mode]:,} polls, {result.errors[mode]} errors)"
        )
    return lines


def results_markdown(result: ConnResult, mode: str) -> str:
    s, at = result.settings, 100_000 / 30  # node intervals/s of 100,000 nodes at 30 s
    idle_100k = (result.rss_per_connection + result.kernel_per_connection / 2) * 100_000
    out = [
        run_header(mode),
        "",
        f"One `edgesync serve` on core {s.server_cpu} (default access log), this process on"
        f" core {s.client_cpu}; {s.nodes} nodes polling at {s.rate:g}/s for {s.seconds:g} s"
        " per mode (latency is not the point here: serve's CPU is).",
        "",
        "| connection | serve CPU per poll | polls | errors |",
        "|---|---:|---:|---:|",
    ]
    for name in MODES:
        out.append(
            f"| {name} | {result.cpu_us[name]:.0f} µs | {result.polls[name]:,}"
            f" | {result.errors[name]} |"
        )
    tcp = result.cpu_us["http new"] - result.cpu_us["http kept"]
    out += [
        "",
        f"* Idle connections ({s.idle_connections:,}, one poll each, then idle): serve's"
        f" RSS grew **{result.rss_per_connection / 1024:.1f} KiB per connection**; the"
        f" kernel's TCP memory {result.kernel_per_connection / 1024:.1f} KiB per connection"
        " (both ends of each loopback connection).",
        f"* A new connection per poll costs serve {tcp:.0f} µs more than a kept one over"
        f" HTTP; over TLS 1.3 the handshake costs **{result.handshake_us:.0f} µs** of serve"
        " CPU per node interval.",
        f"* The trade-off at 100,000 nodes polling every 30 s ({at:,.0f} intervals/s):"
        f" kept connections hold about {idle_100k / 2**20:,.0f} MiB of serve and kernel"
        f" memory; a TLS handshake per interval would take"
        f" {result.handshake_us * at / 1e6:.2f} cores, against the goal of 420 µs for"
        " everything per interval. **Default: keep connections** (agent keep-alive 60 s,"
        " serve's max(75 s, 1.1 × poll interval + 15 s)); docs/deploy.md says how to size"
        " the file-descriptor limit.",
        "",
    ]
    return "\n".join(out)


REPORT = Report(KEY, HEADING, "edgesync-bench-conn-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("kept connections:")
    settings = ConnSettings.quick() if quick else ConnSettings()
    return REPORT(lambda tmp: run(tmp, settings), quick=quick, write=write, json_path=json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 idle connections, 3 s runs")
    parser.add_argument("--idle-connections", type=int)
    args = REPORT.parse_args(parser, argv)
    settings = ConnSettings.quick() if args.quick else ConnSettings()
    if args.idle_connections:
        settings.idle_connections = args.idle_connections
    return REPORT.from_args(lambda tmp: run(tmp, settings), args)


if __name__ == "__main__":
    sys.exit(main())
