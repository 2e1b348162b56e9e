"""The fleet simulator's own logic (bench/fleet_load.py, bench/fleet_sim.py): its
open-loop schedule, reply parsing, percentiles and recovery, and a 20-node fleet
against a real ``edgesync serve`` subprocess. No timing is asserted."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest

from bench.common import HOST, edgesync_serve
from bench.fleet_load import Fleet, HttpConnection, Outcome, build_request, schedule
from bench.fleet_sim import Phase, enroll, heartbeat_every, interval_requests


def test_schedule_spreads_each_node_over_jittered_intervals() -> None:
    nodes, rate, duration = 50, 100.0, 10.0  # each node every 0.5 s
    events = schedule(nodes, rate, 1000.0, duration, random.Random(1))
    assert [at for at, _ in events] == sorted(at for at, _ in events)
    assert all(1000.0 <= at < 1000.0 + duration for at, _ in events)
    assert len(events) == pytest.approx(rate * duration, rel=0.1)
    times: dict[int, list[float]] = defaultdict(list)
    for at, node in events:
        times[node].append(at)
    assert set(times) == set(range(nodes))
    interval = nodes / rate
    for series in times.values():
        assert series[0] < 1000.0 + interval  # a random phase within the first interval
        gaps = [b - a for a, b in itertools.pairwise(series)]
        assert all(0.9 * interval <= gap <= 1.1 * interval for gap in gaps)  # agent jitter


@pytest.mark.parametrize(("nodes", "rate", "duration"), [(0, 10, 1), (5, 0, 1), (5, 10, 0)])
def test_schedule_of_nothing_is_empty(nodes: int, rate: float, duration: float) -> None:
    assert schedule(nodes, rate, 0.0, duration, random.Random(1)) == []


def test_reply_parsing_waits_for_the_whole_body_across_reads() -> None:
    async def scenario() -> None:
        connection = HttpConnection()

        class Sink:
            def write(self, data: bytes) -> None:
                pass

        connection.transport = Sink()  # type: ignore[assignment]
        pending = asyncio.ensure_future(connection.request(b"GET / HTTP/1.1\r\n\r\n"))
        await asyncio.sleep(0)
        connection.data_received(b"HTTP/1.1 201 Created\r\nContent-Len")
        connection.data_received(b'gth: 7\r\nETag: "e1"\r\n\r\n{"a":')
        await asyncio.sleep(0)
        assert not pending.done()
        connection.data_received(b"1}")
        assert await pending == 201
        assert connection.body == b'{"a":1}'
        assert connection.header("etag") == '"e1"'

    asyncio.run(scenario())


def test_requests_carry_host_auth_and_body_length() -> None:
    raw = build_request("POST", "/x", "h", {"Authorization": "Bearer t"}, b"{}")
    assert raw.startswith(b"POST /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n")
    assert raw.endswith(b"Content-Length: 2\r\n\r\n{}")


def test_percentiles_and_recovery_from_the_scheduled_seconds() -> None:
    outcome = Outcome(scheduled=1000)
    outcome.latencies = [i / 1000 for i in range(1, 1001)]  # 1 ms … 1000 ms
    assert outcome.percentiles_ms() == pytest.approx({"p50": 500, "p99": 990, "p999": 999})
    outcome.by_second = {0: [0.5], 1: [0.2], 2: [0.01], 3: [0.02]}
    phase = Phase("recovery", 100, 4, outcome, 1.0, 0.0, 4.0)
    assert phase.recovered_after_s() == 2.0
    outcome.by_second[3] = [0.3]
    assert phase.recovered_after_s() is None  # still over 50 ms at the end
    assert phase.cpu_us() == pytest.approx(1e6 / 1000)


@pytest.mark.parametrize("keep", [True, False])
def test_a_small_fleet_polls_a_real_serve_with_its_own_tokens(tmp_path: Path, keep: bool) -> None:
    async def scenario(base: str, servers: list) -> Outcome:  # type: ignore[type-arg]
        nodes = await enroll(servers, 20, concurrency=4)
        assert len({n.node_id for n in nodes}) == len({n.token for n in nodes}) == 20
        port = int(base.rsplit(":", 1)[1])
        fleet = Fleet(
            [(HOST, port)] * 20,
            [interval_requests(n, HOST, "pair" if keep else "poll") for n in nodes],
            keep=keep,
            expected=[200, 304] if keep else [304],
        )
        start = time.monotonic()
        try:
            return await fleet.run(schedule(20, 40, start, 1.0, random.Random(2)), start)
        finally:
            fleet.close()

    with edgesync_serve(tmp_path, extra_args=["--bcrypt-cost", "4"]) as server:
        outcome = asyncio.run(scenario(server.base, [server]))
    assert outcome.errors == {}
    assert len(outcome.latencies) == outcome.scheduled > 0


def test_a_poll_interval_fleet_heartbeats_every_nth_interval_like_the_agent() -> None:
    from agent.loop import HEARTBEAT_EVERY_INTERVALS

    every = heartbeat_every("poll")
    assert every == HEARTBEAT_EVERY_INTERVALS
    assert heartbeat_every("pair") == 0  # its heartbeat is in every interval already
    fleet = Fleet(
        [(HOST, 1)] * 3,
        [[b"poll"]] * 3,
        keep=True,
        expected=[304],
        heartbeats=[b"beat"] * 3,
        heartbeat_every=every,
    )
    for node in range(3):
        sent = [fleet._this_interval(node) for _ in range(3 * every)]
        beats = [i for i, requests in enumerate(sent) if requests[0] == (b"beat", 200)]
        assert len(beats) == 3 and beats[1] - beats[0] == beats[2] - beats[1] == every
        assert all(requests[-1] == (b"poll", 304) for requests in sent)


def test_the_cpu_figure_comes_from_a_phase_driven_without_a_queue() -> None:
    from bench.fleet_sim import FleetResult, FleetSettings

    def phase(name: str, rate: float, latency: float, errors: dict[str, int]) -> Phase:
        outcome = Outcome(scheduled=100, latencies=[latency] * 100, errors=errors)
        return Phase(name, rate, 1, outcome, serve_cpu_s=rate / 1e4, db_cpu_s=0.0, wall_s=1)

    queued = phase("probe", 1500, 9.0, {"TimeoutError": 5})
    clean_steady = phase("steady", 400, 0.003, {})
    result = FleetResult(FleetSettings(nodes=10), phases=[queued, clean_steady])
    assert result.measured is clean_steady
    clean_probe = phase("probe", 1500, 0.004, {})
    result.phases = [clean_probe, clean_steady]
    assert result.measured is clean_probe  # both clean: the faster one
    result.phases = [queued, phase("steady", 400, 5.0, {})]
    assert result.measured.name == "steady"  # neither clean: the cheaper per interval
    assert result.cpu_us == pytest.approx(result.measured.cpu_us())


def test_the_report_renders_every_fleet_and_phase() -> None:
    from bench.fleet import FleetRuns, results_markdown, summary_lines
    from bench.fleet_sim import FleetResult, FleetSettings

    phases = []
    for name, rate in (("probe", 1500), ("steady", 2000), ("overload", 4000), ("recovery", 2000)):
        outcome = Outcome(scheduled=10, latencies=[0.002] * 10, by_second={0: [0.002] * 10})
        phases.append(Phase(name, rate, 1, outcome, 0.003, 0.001, 1.0, 0.2, 0.1))
    result = FleetResult(
        FleetSettings(nodes=10, backend="postgres", replicas=2),
        phases=phases,
        commit="abc1234 subject",
        enrol_anomalies={"401 on a new node's first poll: b'...'": 1},
    )
    runs = FleetRuns([result])
    text = results_markdown(runs, "quick")
    assert "PostgreSQL, 2 replicas" in text and "`abc1234 subject`" in text
    assert text.count("| PostgreSQL, 2 replicas | ") == 5  # the fleet row and four phases
    assert "Server anomalies during enrolment" in text
    # Both unqueued: the CPU figure is the faster phase's, never overload's.
    assert "CPU per node interval (steady, 2,000/s)" in "\n".join(summary_lines(runs))
