"""The fleet simulator's load generator: open-loop node intervals over raw HTTP/1.1.

Thousands of requests a second from one core in Python rule out a general client:
aiohttp's ``ClientSession`` spends several times the server's cost per request. Each
request here is a prebuilt byte string written to an asyncio ``Protocol``; the reply
is parsed only as far as its status line and ``Content-Length`` (the server's
replies to these requests have no chunked bodies).

Open loop: every interval has a scheduled start, fixed before the run, and its
latency is measured from that start, not from when a busy generator got round to
sending it. A server that falls behind then shows its queueing in the percentiles
instead of slowing the load down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl as tls
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.support import percentile

# Distinct loopback source addresses: each gives its own ~28,000 ephemeral ports
# towards the server, for 10,000+ kept connections or a new connection per interval.
SOURCE_ADDRESSES = tuple(f"127.0.0.{index}" for index in range(2, 34))


# -- the schedule -------------------------------------------------------------------------


def jittered_interval(interval: float, rng: random.Random) -> float:
    """An agent's wait between polls: ``interval`` ± 10 % (``agent.backoff.jittered``)."""
    from agent.backoff import jittered

    return jittered(interval, rng)


def schedule(
    nodes: int, rate: float, start: float, duration: float, rng: random.Random
) -> list[tuple[float, int]]:
    """``(scheduled start, node index)`` of every node interval in ``[start, start + duration)``
    when ``nodes`` nodes together make ``rate`` intervals a second, sorted by time.

    Each node polls every ``nodes / rate`` seconds, jittered as the agent does, from a
    random phase within its first interval (a fleet that did not start in lockstep).
    """
    if nodes < 1 or rate <= 0 or duration <= 0:
        return []
    interval = nodes / rate
    end = start + duration
    events: list[tuple[float, int]] = []
    for node in range(nodes):
        at = start + rng.uniform(0.0, interval)
        while at < end:
            events.append((at, node))
            at += jittered_interval(interval, rng)
    events.sort()
    return events


# -- HTTP/1.1 over a Protocol --------------------------------------------------------------


class ConnectionLost(ConnectionError):
    """The server closed the connection before the whole reply arrived."""


class HttpConnection(asyncio.Protocol):
    """One client connection; one request in flight at a time (as an agent has)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.head: list[bytes] = []  # the last reply's status line and headers
        self.body = b""  # the last reply's body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._try_finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost("closed by the server"))

    def _try_finish(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None or self._waiter.done():
            return
        head = bytes(self._buffer[:end]).split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        self.head, self.body = head, bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        self._waiter.set_result(int(head[0].split(b" ", 2)[1]))

    def header(self, name: str) -> str | None:
        """A header of the last reply (first of that name), or None."""
        wanted = name.lower().encode()
        for line in self.head[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                return value.strip().decode()
        return None

    async def request(self, raw: bytes) -> int:
        """Send one prebuilt request; its reply's status."""
        if self.closed or self.transport is None:
            raise ConnectionLost("connection already closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


async def connect(
    host: str, port: int, source: str | None, ssl: tls.SSLContext | None = None
) -> HttpConnection:
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None
    _, protocol = await loop.create_connection(
        HttpConnection,
        host,
        port,
        local_addr=local,
        ssl=ssl,
        server_hostname=host if ssl else None,
    )
    return protocol


def build_request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- running the schedule -------------------------------------------------------------------


@dataclass
class Outcome:
    """One phase's intervals: latency from the scheduled start, and what failed."""

    scheduled: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, of the completed ones
    by_second: dict[int, list[float]] = field(default_factory=dict)  # by scheduled second
    errors: dict[str, int] = field(default_factory=dict)  # status or exception name
    late_start_max: float = 0.0  # how far behind schedule the generator itself fell

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def percentiles_ms(self) -> dict[str, float]:
        return {
            name: percentile(self.latencies, fraction) * 1000
            for name, fraction in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
        }


class Fleet:
    """The simulated nodes: each its own prebuilt requests, and a kept connection or not."""

    def __init__(
        self,
        targets: Sequence[tuple[str, int]],
        requests: Sequence[Sequence[bytes]],
        *,
        keep: bool,
        expected: Sequence[int],
        ssl: tls.SSLContext | None = None,
        timeout: float = 30.0,
        max_in_flight: int = 8000,
        heartbeats: Sequence[bytes] = (),
        heartbeat_every: int = 0,
    ) -> None:
        self.targets = targets  # per node: (host, port) of its replica
        self.requests = requests  # per node: the requests of one interval, in order
        self.expected = expected  # the status each request of an interval should get
        self.keep = keep
        # Per node, a heartbeat (answered 200) before the poll of every
        # ``heartbeat_every``-th interval, as a converged agent sends one every N
        # intervals; nodes start at different points of that cycle.
        self.heartbeats = heartbeats
        self.heartbeat_every = heartbeat_every
        self._intervals: dict[int, int] = {}
        self.ssl = ssl
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connections: dict[int, HttpConnection] = {}
        # An agent sends its next interval only after the last one ended: a node whose
        # interval is due while its previous one is still waiting waits too (its
        # latency, from the scheduled start, includes that wait).
        self._busy: dict[int, asyncio.Lock] = {}

    async def _connection(self, node: int) -> HttpConnection:
        kept = self._connections.get(node)
        if kept is not None and not kept.closed:
            return kept
        host, port = self.targets[node]
        source = SOURCE_ADDRESSES[node % len(SOURCE_ADDRESSES)]
        connection = await connect(host, port, source, self.ssl)
        if self.keep:
            self._connections[node] = connection
        return connection

    def _this_interval(self, node: int) -> list[tuple[bytes, int]]:
        sent = list(zip(self.requests[node], self.expected, strict=True))
        if self.heartbeats and self.heartbeat_every > 0:
            count = self._intervals.get(node, node % self.heartbeat_every) + 1
            self._intervals[node] = count
            if count % self.heartbeat_every == 0:
                sent.insert(0, (self.heartbeats[node], 200))
        return sent

    async def connect_all(self, concurrency: int = 200) -> None:
        """Open every node's kept connection before the measured phases."""
        nodes = iter(range(len(self.requests)))

        async def worker() -> None:
            for node in nodes:
                await self._connection(node)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def interval(self, node: int, scheduled: float, outcome: Outcome) -> None:
        # Kept for good: dropping a released lock while another interval waits on it
        # would let a third start beside that one on the same connection.
        async with self._busy.setdefault(node, asyncio.Lock()):
            await self._interval(node, scheduled, outcome)

    async def _interval(self, node: int, scheduled: float, outcome: Outcome) -> None:
        async with self._slots:
            connection: HttpConnection | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    connection = await self._connection(node)
                    for raw, expected in self._this_interval(node):
                        status = await connection.request(raw)
                        if status != expected:
                            outcome.error(f"HTTP {status}")
                            return
            except (OSError, TimeoutError) as exc:
                outcome.error(type(exc).__name__)
                if connection is not None:
                    connection.close()
                return
            finally:
                if connection is not None and not self.keep:
                    connection.close()
        latency = time.monotonic() - scheduled
        outcome.latencies.append(latency)
        outcome.by_second.setdefault(int(scheduled - self._origin), []).append(latency)

    _origin = 0.0

    async def run(self, events: Sequence[tuple[float, int]], origin: float) -> Outcome:
        """Start each interval at its scheduled time (``time.monotonic()`` clock)."""
        self._origin = origin
        outcome = Outcome(scheduled=len(events))
        tasks: set[asyncio.Task[None]] = set()
        index = 0
        while index < len(events):
            now = time.monotonic()
            while index < len(events) and events[index][0] <= now:
                at, node = events[index]
                outcome.late_start_max = max(outcome.late_start_max, now - at)
                task = asyncio.create_task(self.interval(node, at, outcome))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            if index < len(events):
                await asyncio.sleep(max(0.0, min(0.002, events[index][0] - time.monotonic())))
        if tasks:
            await asyncio.wait(tasks)
        return outcome

    def close(self) -> None:
        for connection in self._connections.values():
            with contextlib.suppress(Exception):
                connection.close()
        self._connections.clear()
