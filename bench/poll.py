"""Benchmark 1: no-change polls, edgesync against a bare aiohttp 304 in the same run.

A fleet that has converged polls and gets 304 Not Modified almost every time,
so this is the request the control plane answers most. Both servers run on
core 0 (``taskset -c 0``), ``wrk`` on core 1, with the same settings; the
result is edgesync's rate as a share of the bare handler's.

The edgesync node is in the realistic converged state: a function and a schema
migration exist, the node fetched the plan, acked success with the target
state, polled once more for the new (empty) plan's ETag, and from then on
polls with that ETag. Each wrk run is checked against the server's metrics:
every poll must have been a 304 and no bcrypt call may have happened.

Run alone: ``.venv/bin/python bench/poll.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BenchError,
    Server,
    bare_app,
    busy_seconds,
    call,
    cpu_seconds,
    edgesync_serve,
    expect,
    metric_sum,
    pinned,
    require_tools,
    wait_for_quiet,
)

SYNC_ROUTE = 'route="/api/v1/nodes/{node_id}/sync"'

# wrk calls done() once at the end: print what we need as one JSON line (times in µs).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format(
    '\\nBENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class PollSettings:
    connections: int = 50
    duration: float = 10.0
    warmup: float = 3.0
    runs: int = 3
    server_cpu: int = 0
    client_cpu: int = 1
    # A run in which the server got less of its core than this was disturbed by
    # other processes: it is repeated (at most ``retries`` times in all).
    min_core_share: float = 0.9
    max_foreign_load: float = 0.2  # cores used by other processes during a run
    retries: int = 3
    # Before each measured run, wait up to this long for other processes to calm down.
    quiet_wait: float = 30.0

    def undisturbed(self, run: WrkRun) -> bool:
        return run.cpu_share >= self.min_core_share and run.foreign_load <= self.max_foreign_load

    @classmethod
    def quick(cls) -> PollSettings:
        return cls(duration=3.0, warmup=1.0, runs=1, retries=1, quiet_wait=5.0)


@dataclass
class WrkRun:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    status_errors: int  # wrk counts only statuses >= 400 here (304 is not an error)
    socket_errors: int
    server_cpu_s: float  # CPU time the server process used during the run
    foreign_cpu_s: float  # CPU time neither the server nor wrk used (other processes)
    interfered: bool = False  # other processes disturbed it (see PollSettings.undisturbed)

    @property
    def cpu_share(self) -> float:
        """How much of its core the server got (below ~0.95: something else competed)."""
        return self.server_cpu_s / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s * 1e6 / self.requests if self.requests else 0.0

    @property
    def foreign_load(self) -> float:
        """Other processes' CPU use during the run, in cores (0.1 = a tenth of a core)."""
        return self.foreign_cpu_s / self.seconds if self.seconds else 0.0


@dataclass
class TargetResult:
    name: str
    runs: list[WrkRun] = field(default_factory=list)
    disturbed: list[WrkRun] = field(default_factory=list)  # repeated, not in the medians
    # Set once both servers are measured: use only undisturbed runs when both have one
    # (comparing clean runs of one with disturbed runs of the other would be unfair).
    only_clean: bool = False

    @property
    def clean(self) -> list[WrkRun]:
        return [r for r in self.runs if not r.interfered]

    @property
    def counted(self) -> list[WrkRun]:
        """The runs the medians use."""
        return self.clean if self.only_clean else self.runs

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.counted)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.counted)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.counted)

    @property
    def cpu_us_per_request(self) -> float:
        return statistics.median(r.cpu_us_per_request for r in self.counted)

    @property
    def cpu_share(self) -> float:
        return min(r.cpu_share for r in self.counted)


@dataclass
class PollResult:
    settings: PollSettings
    bare: TargetResult
    edgesync: TargetResult
    polls_counted: int = 0  # requests wrk completed against edgesync (measured runs)
    not_modified_served: int = 0  # edgesync_plans_served_total{kind="not_modified"} delta
    fast_path_served: int = 0  # of those, answered by the fast path (edgesync_polls_fast_path)
    full_plans_served: int = 0  # ... {kind="full"} delta: must stay 0
    non_304_responses: int = 0  # sync-route responses with another status: must stay 0
    bcrypt_calls: int = 0  # edgesync_bcrypt_calls_total delta over all wrk runs
    etag: str = ""

    @property
    def ratio(self) -> float:
        return self.edgesync.rps / self.bare.rps if self.bare.rps else 0.0

    @property
    def cpu_ratio(self) -> float:
        """The same comparison per CPU second of the server: immune to other load."""
        edge = self.edgesync.cpu_us_per_request
        return self.bare.cpu_us_per_request / edge if edge else 0.0

    @property
    def disturbed(self) -> bool:
        """Whether a run counted in the medians was disturbed (the retries ran out)."""
        return any(r.interfered for t in (self.bare, self.edgesync) for r in t.counted)

    @property
    def all_304(self) -> bool:
        return (
            self.full_plans_served == 0
            and self.non_304_responses == 0
            and self.not_modified_served >= self.polls_counted
            and all(
                r.status_errors == 0
                for t in (self.bare, self.edgesync)
                for r in t.runs + t.disturbed
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            **{
                key: {
                    "runs": [asdict(r) for r in target.runs],
                    "disturbed_runs": [asdict(r) for r in target.disturbed],
                    "median_rps": target.rps,
                    "median_cpu_us_per_request": target.cpu_us_per_request,
                }
                for key, target in (("bare", self.bare), ("edgesync", self.edgesync))
            },
            "ratio": self.ratio,
            "cpu_ratio": self.cpu_ratio,
            "all_304": self.all_304,
            "disturbed": self.disturbed,
            "polls_counted": self.polls_counted,
            "not_modified_served": self.not_modified_served,
            "full_plans_served": self.full_plans_served,
            "fast_path_served": self.fast_path_served,
            "non_304_responses": self.non_304_responses,
            "bcrypt_calls": self.bcrypt_calls,
        }


# -- wrk --------------------------------------------------------------------------------


def run_wrk(
    server: Server,
    path: str,
    headers: dict[str, str],
    settings: PollSettings,
    duration: float,
    workdir: Path,
) -> WrkRun:
    """One wrk run against ``server``; also measures the server's CPU time meanwhile."""
    script = workdir / "report.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    command = ["wrk", "-t1", f"-c{settings.connections}", f"-d{duration:g}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command += ["-s", str(script), server.base + path]
    cpu_before = cpu_seconds(server.pid)
    busy_before, ours_before = busy_seconds(), _own_cpu()
    done = subprocess.run(
        pinned(command, settings.client_cpu),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    server_cpu = cpu_seconds(server.pid) - cpu_before
    ours = _own_cpu() - ours_before
    foreign = max(0.0, busy_seconds() - busy_before - server_cpu - ours)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = data["duration_us"] / 1e6
    return WrkRun(
        requests=data["requests"],
        seconds=seconds,
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        status_errors=data["status_errors"],
        socket_errors=data["connect_errors"]
        + data["read_errors"]
        + data["write_errors"]
        + data["timeouts"],
        server_cpu_s=server_cpu,
        foreign_cpu_s=foreign,
    )


def _settle(settings: PollSettings, log: Any) -> None:
    """Start a run only once other processes leave the cores alone (bounded wait)."""
    if settings.quiet_wait <= 0:
        return
    started = time.monotonic()
    load = wait_for_quiet(settings.quiet_wait, settings.max_foreign_load)
    waited = time.monotonic() - started
    if waited >= 1.0:
        state = "quiet" if load < settings.max_foreign_load else f"still {load:.2f} cores busy"
        log(f"    waited {waited:.0f} s for other processes to calm down ({state})")


def _own_cpu() -> float:
    """CPU time of this process and its finished children (wrk) so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


# -- a converged node -------------------------------------------------------------------


def tiny_module(workdir: Path) -> Path:
    import wasmtime

    path = workdir / "tiny.wasm"
    path.write_bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    return path


def converged_node(server: Server, workdir: Path) -> tuple[str, str, str]:
    """Register a node, give it a non-empty plan, ack it: ``(node_id, token, etag)``."""
    from edgesync.client import ApiClient

    base, admin = server.base, server.admin_headers()
    enrollment = expect(
        call(base, "POST", "/api/v1/enrollment-tokens", headers=admin, body={}),
        201,
        "create enrollment token",
    ).json()["token"]
    registered = expect(
        call(
            base,
            "POST",
            "/api/v1/nodes/register",
            body={"name": "bench-node", "region": "bench", "enrollment_token": enrollment},
        ),
        201,
        "register node",
    ).json()
    node_id, token = registered["node_id"], registered["token"]
    ApiClient(base, server.admin_token).upload("bench-fn", "1.0.0", tiny_module(workdir))
    expect(
        call(
            base,
            "POST",
            "/api/v1/schemas",
            headers=admin,
            body={
                "version": 1,
                "description": "bench table",
                "up_sql": "CREATE TABLE bench_kv (k TEXT PRIMARY KEY, v TEXT);",
            },
        ),
        201,
        "add schema migration",
    )
    node = {"Authorization": f"Bearer {token}"}
    path = f"/api/v1/nodes/{node_id}/sync"
    first = expect(call(base, "GET", path, headers=node), 200, "first poll")
    plan = first.json()
    if not plan["actions"] or not plan["sync_id"]:
        raise BenchError(f"expected a non-empty first plan, got {plan}")
    ack = {"sync_id": plan["sync_id"], "status": "success", "state": plan["target"], "error": None}
    expect(call(base, "POST", f"{path}/ack", headers=node, body=ack), 200, "ack")
    after = expect(
        call(base, "GET", path, headers={**node, "If-None-Match": first.headers["etag"]}),
        200,
        "poll after ack",
    )
    if after.json()["actions"]:
        raise BenchError(f"the plan after a successful ack is not empty: {after.json()}")
    etag = after.headers["etag"]
    expect(
        call(base, "GET", path, headers={**node, "If-None-Match": etag}),
        304,
        "converged poll",
    )
    return node_id, token, etag


# -- the benchmark ----------------------------------------------------------------------


def run(workdir: Path, settings: PollSettings, log: Any = print) -> PollResult:
    require_tools("wrk", "taskset")
    with (
        bare_app(workdir, cpu=settings.server_cpu) as bare,
        # serve's defaults: access log and metrics on (a 304 poll is counted, not logged).
        edgesync_serve(workdir, cpu=settings.server_cpu, access_log=True) as serve,
    ):
        node_id, token, etag = converged_node(serve, workdir)
        path = f"/api/v1/nodes/{node_id}/sync"
        # As an agent polls: its version and state ETag ride on the poll as its liveness.
        headers = {
            "Authorization": f"Bearer {token}",
            "If-None-Match": etag,
            "X-Edgesync-Agent-Version": "bench",
            "X-Edgesync-State-Etag": '"bench-state"',
        }
        base_result, edge = TargetResult("bare aiohttp"), TargetResult("edgesync serve")
        targets = {"bare": (bare, base_result), "edgesync": (serve, edge)}
        result = PollResult(settings, base_result, edge, etag=etag)
        before = serve.metrics()
        for name in ("bare", "edgesync"):
            log(f"  warm-up {name} ({settings.warmup:g} s)")
            run_wrk(targets[name][0], path, headers, settings, settings.warmup, workdir)
        warm = serve.metrics()
        retries = settings.retries
        for index in range(settings.runs):
            # Alternate which goes first, so drift (thermal, neighbours) hits both alike.
            order = ("bare", "edgesync") if index % 2 == 0 else ("edgesync", "bare")
            for name in order:
                target, outcome = targets[name]
                while True:
                    _settle(settings, log)
                    measured = run_wrk(target, path, headers, settings, settings.duration, workdir)
                    log(
                        f"  run {index + 1}/{settings.runs} {name:8s} {measured.rps:9.0f} req/s"
                        f"  p50 {measured.p50_ms:.2f} ms  p99 {measured.p99_ms:.2f} ms"
                        f"  {measured.cpu_us_per_request:.1f} µs CPU/req"
                        f"  (server got {measured.cpu_share:.0%} of its core;"
                        f" other processes used {measured.foreign_load:.2f} cores)"
                    )
                    measured.interfered = not settings.undisturbed(measured)
                    if not measured.interfered or retries <= 0:
                        outcome.runs.append(measured)
                        break
                    retries -= 1
                    outcome.disturbed.append(measured)
                    log("    disturbed by other processes: repeating this run")
        after = serve.metrics()
    base_result.only_clean = edge.only_clean = bool(base_result.clean and edge.clean)

    def delta(name: str, *labels: str, since: dict[str, float] = warm) -> int:
        return round(metric_sum(after, name, *labels) - metric_sum(since, name, *labels))

    result.polls_counted = sum(r.requests for r in edge.runs + edge.disturbed)
    result.not_modified_served = delta("edgesync_plans_served_total", 'kind="not_modified"')
    result.fast_path_served = delta("edgesync_polls_fast_path_total")
    result.full_plans_served = delta("edgesync_plans_served_total", 'kind="full"', since=before)
    result.bcrypt_calls = delta("edgesync_bcrypt_calls_total", since=before)
    result.non_304_responses = round(
        metric_sum(after, "edgesync_api_request_seconds_count", SYNC_ROUTE)
        - metric_sum(after, "edgesync_api_request_seconds_count", SYNC_ROUTE, 'status="304"')
        - metric_sum(before, "edgesync_api_request_seconds_count", SYNC_ROUTE)
        + metric_sum(before, "edgesync_api_request_seconds_count", SYNC_ROUTE, 'status="304"')
    )
    return result


def summary_lines(result: PollResult) -> list[str]:
    bare, edge, settings = result.bare, result.edgesync, result.settings
    lines = [
        f"no-change polls (wrk -t1 -c{settings.connections}, "
        f"{settings.runs} x {settings.duration:g} s, median of"
        f" {len(bare.counted)} + {len(edge.counted)}"
        f" {'undisturbed ' if edge.only_clean else ''}runs):",
        *(
            f"  {t.name:14s} {t.rps:9.0f} req/s  p50 {t.p50_ms:6.2f} ms  p99 {t.p99_ms:6.2f} ms"
            f"  {t.cpu_us_per_request:5.1f} µs server CPU/req"
            for t in (bare, edge)
        ),
        f"  ratio          {result.ratio:9.1%}  (goal >= 75%, access log and metrics on);"
        f" per server CPU second {result.cpu_ratio:.1%}",
        f"  all 304        {'yes' if result.all_304 else 'NO'}"
        f"  ({result.not_modified_served} served as not_modified for {result.polls_counted}"
        f" counted by wrk; full plans {result.full_plans_served}, other statuses"
        f" {result.non_304_responses}; {result.fast_path_served} by the fast path)",
        f"  bcrypt calls   {result.bcrypt_calls} during the runs (goal 0)",
    ]
    repeated = len(bare.disturbed) + len(edge.disturbed)
    if repeated:
        lines.append(f"  repeated       {repeated} run(s) disturbed by other processes")
    if result.disturbed:
        lines.append(
            "  warning: all runs of a server were disturbed by other processes (retries ran"
            " out): requests/s are unreliable, the per-CPU-second ratio is the fairer figure"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 x 3 s runs after a 1 s warm-up")
    args = parser.parse_args()
    settings = PollSettings.quick() if args.quick else PollSettings()
    with tempfile.TemporaryDirectory(prefix="edgesync-bench-") as tmp:
        result = run(Path(tmp), settings)
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
