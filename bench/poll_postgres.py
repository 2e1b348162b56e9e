"""Benchmark 7: no-change polls with the PostgreSQL store, beside SQLite and the bare handler.

Benchmark 1 (``bench/poll.py``) with a third server in the same run:
``edgesync serve --database-url postgresql://…`` on a scratch database created
for the run and dropped after it (on the PostgreSQL at
``$EDGESYNC_BENCH_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``). With that URL the store is
*shared* (replicas may run beside it), so the poll path asks the database for
the node's stamp on every poll instead of trusting an in-process cache.

The three servers (bare aiohttp 304, ``serve`` on SQLite, ``serve`` on
PostgreSQL) are pinned to core 0, ``wrk`` to core 1, with the same
converged-node setup, wrk script and checks as benchmark 1 (it reuses that
code). The PostgreSQL backends serving the scratch database are not pinned
(they belong to the system's server): their CPU time during each run is read
from ``/proc`` and reported apart, and added to ``serve``'s own for the
CPU-per-poll figure. The database's committed transactions per poll come from
``pg_stat_database``.

Run alone: ``.venv/bin/python bench/poll_postgres.py [--quick] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import poll
from bench.common import (
    BenchError,
    Server,
    background_load,
    bare_app,
    edgesync_serve,
    metric_sum,
    require_tools,
    wait_for_quiet,
)
from bench.support import Report, run_header

KEY, HEADING = "poll-postgres", "7. No-change polls on PostgreSQL: results"
ADMIN_URL_ENV = "EDGESYNC_BENCH_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NAMES = ("bare", "sqlite", "postgres")
LABELS = {
    "bare": "bare aiohttp 304 (baseline)",
    "sqlite": "`edgesync serve`, SQLite",
    "postgres": "`edgesync serve`, PostgreSQL",
}


def default_settings(quick: bool) -> poll.PollSettings:
    if quick:
        return poll.PollSettings(duration=3, warmup=1, runs=1, retries=1, quiet_wait=2)
    return poll.PollSettings(duration=5, warmup=2, runs=3, retries=3, quiet_wait=5)


@dataclass
class Measured:
    run: poll.WrkRun
    db_cpu_s: float = 0.0  # PostgreSQL backends of the scratch database
    db_commits: int = 0  # pg_stat_database.xact_commit delta
    disturbed: bool = False

    @property
    def cpu_us_per_request(self) -> float:
        requests = self.run.requests
        return (self.run.server_cpu_s + self.db_cpu_s) * 1e6 / requests if requests else 0.0


@dataclass
class Target:
    name: str
    runs: list[Measured] = field(default_factory=list)
    repeated: list[Measured] = field(default_factory=list)

    @property
    def counted(self) -> list[Measured]:
        return [m for m in self.runs if not m.disturbed] or self.runs

    def med(self, value: Any) -> float:
        return statistics.median(value(m) for m in self.counted)

    @property
    def rps(self) -> float:
        return self.med(lambda m: m.run.rps)


@dataclass
class PgPollResult:
    settings: poll.PollSettings
    targets: dict[str, Target]
    checks: dict[str, dict[str, int]] = field(default_factory=dict)  # per serve
    server_version: str = ""
    load: dict[str, float] = field(default_factory=dict)

    def ratio(self, name: str) -> float:
        return self.targets[name].rps / self.targets["bare"].rps

    def cpu_ratio(self, name: str) -> float:
        bare = self.targets["bare"].med(lambda m: m.cpu_us_per_request)
        return bare / self.targets[name].med(lambda m: m.cpu_us_per_request)

    def all_304(self, name: str) -> bool:
        c = self.checks[name]
        return c["full"] == 0 and c["other_status"] == 0 and c["not_modified"] >= c["polls"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "targets": {
                name: {
                    "runs": [_measured_dict(m) for m in t.runs],
                    "repeated": [_measured_dict(m) for m in t.repeated],
                    "median_rps": t.rps,
                }
                for name, t in self.targets.items()
            },
            "ratios": {n: self.ratio(n) for n in ("sqlite", "postgres")},
            "cpu_ratios": {n: self.cpu_ratio(n) for n in ("sqlite", "postgres")},
            "checks": self.checks,
            "server_version": self.server_version,
            "load": self.load,
        }


def _measured_dict(m: Measured) -> dict[str, Any]:
    return {
        **dataclasses.asdict(m.run),
        "rps": m.run.rps,
        "db_cpu_s": m.db_cpu_s,
        "db_commits": m.db_commits,
        "cpu_us_per_request": m.cpu_us_per_request,
        "disturbed": m.disturbed,
    }


# -- the scratch database ----------------------------------------------------------------


def admin_url() -> str:
    return (
        os.environ.get(ADMIN_URL_ENV)
        or os.environ.get("EDGESYNC_TEST_POSTGRES_URL")
        or DEFAULT_ADMIN_URL
    )


@contextlib.contextmanager
def scratch_database() -> Iterator[tuple[str, str, Any]]:
    """``(url, name, monitor)``: a new database, dropped afterwards; ``monitor`` is an
    autocommit connection to the admin database for pg_stat_* queries."""
    import psycopg

    admin = admin_url()
    name = f"edgesync_bench_{uuid.uuid4().hex[:12]}"
    try:
        monitor = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL at {_redacted(admin)} is not reachable: {exc}") from exc
    try:
        monitor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(admin)
        url = urlunsplit(parts._replace(path=f"/{name}", query=""))
        yield url, name, monitor
    finally:
        with contextlib.suppress(psycopg.Error):
            monitor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        monitor.close()


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def backend_cpu(monitor: Any, database: str) -> dict[int, float]:
    """CPU seconds so far of every backend connected to ``database`` (by pid)."""
    rows = monitor.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
    ).fetchall()
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for (pid,) in rows:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def commits(monitor: Any, database: str) -> int:
    monitor.execute("SELECT pg_stat_clear_snapshot()")
    row = monitor.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
    ).fetchone()
    return int(row[0]) if row else 0


# -- the benchmark ---------------------------------------------------------------------


def _checks(before: dict[str, float], after: dict[str, float], polls: int) -> dict[str, int]:
    def delta(name: str, *labels: str) -> int:
        return round(metric_sum(after, name, *labels) - metric_sum(before, name, *labels))

    count = "edgesync_api_request_seconds_count"
    return {
        "polls": polls,
        "not_modified": delta("edgesync_plans_served_total", 'kind="not_modified"'),
        "full": delta("edgesync_plans_served_total", 'kind="full"'),
        "other_status": delta(count, poll.SYNC_ROUTE)
        - delta(count, poll.SYNC_ROUTE, 'status="304"'),
        "bcrypt": delta("edgesync_bcrypt_calls_total"),
    }


def run(workdir: Path, settings: poll.PollSettings, log: Any = print) -> PgPollResult:
    require_tools("wrk", "taskset")
    targets = {name: Target(LABELS[name]) for name in NAMES}
    result = PgPollResult(settings, targets, load=background_load(0.5))
    cpu = settings.server_cpu
    with (
        scratch_database() as (url, database, monitor),
        bare_app(workdir, cpu=cpu) as bare,
        edgesync_serve(workdir, cpu=cpu) as lite,
        edgesync_serve(workdir, cpu=cpu, extra_args=["--database-url", url]) as pg,
    ):
        result.server_version = str(monitor.execute("SHOW server_version").fetchone()[0])
        servers: dict[str, Server] = {"bare": bare, "sqlite": lite, "postgres": pg}
        requests: dict[str, tuple[str, dict[str, str]]] = {}
        for name, server in (("sqlite", lite), ("postgres", pg)):
            node_id, token, etag = poll.converged_node(server, workdir)
            headers = {"Authorization": f"Bearer {token}", "If-None-Match": etag}
            requests[name] = (f"/api/v1/nodes/{node_id}/sync", headers)
        requests["bare"] = requests["sqlite"]

        def measure(name: str, seconds: float) -> Measured:
            path, headers = requests[name]
            cpu_before = backend_cpu(monitor, database) if name == "postgres" else {}
            commits_before = commits(monitor, database) if name == "postgres" else 0
            run_ = poll.run_wrk(servers[name], path, headers, settings, seconds, workdir)
            measured = Measured(run_)
            if name == "postgres":
                cpu_after = backend_cpu(monitor, database)
                measured.db_cpu_s = sum(v - cpu_before.get(p, 0.0) for p, v in cpu_after.items())
                time.sleep(0.6)  # backends report their statistics at most every 0.5 s
                measured.db_commits = commits(monitor, database) - commits_before
                # The database's work is the server's, not interference; a server
                # waiting on its database does not use its whole core either.
                foreign = max(0.0, run_.foreign_cpu_s - measured.db_cpu_s)
                measured.run = dataclasses.replace(run_, foreign_cpu_s=foreign)
                measured.disturbed = measured.run.foreign_load > settings.max_foreign_load
            else:
                measured.disturbed = not settings.undisturbed(run_)
            return measured

        before = {n: servers[n].metrics() for n in ("sqlite", "postgres")}
        for name in NAMES:
            log(f"  warm-up {name} ({settings.warmup:g} s)")
            measure(name, settings.warmup)
        warm = {n: servers[n].metrics() for n in ("sqlite", "postgres")}
        retries = settings.retries
        for index in range(settings.runs):
            order = NAMES[index % 3 :] + NAMES[: index % 3]  # rotate: drift hits all alike
            for name in order:
                while True:
                    if settings.quiet_wait > 0:
                        wait_for_quiet(settings.quiet_wait, settings.max_foreign_load)
                    m = measure(name, settings.duration)
                    log(
                        f"  run {index + 1}/{settings.runs} {name:8s} {m.run.rps:8.0f} req/s"
                        f"  p50 {m.run.p50_ms:.2f} ms  p99 {m.run.p99_ms:.2f} ms"
                        f"  {m.cpu_us_per_request:6.1f} µs CPU/poll"
                        + (
                            f" (serve {m.run.cpu_us_per_request:.1f} + database"
                            f" {m.db_cpu_s * 1e6 / max(1, m.run.requests):.1f};"
                            f" {m.db_commits / max(1, m.run.requests):.2f} commits/poll)"
                            if name == "postgres"
                            else ""
                        )
                        + f"  others {m.run.foreign_load:.2f} cores"
                    )
                    if not m.disturbed or retries <= 0:
                        targets[name].runs.append(m)
                        break
                    retries -= 1
                    targets[name].repeated.append(m)
                    log("    disturbed by other processes: repeating this run")
        after = {n: servers[n].metrics() for n in ("sqlite", "postgres")}
    for name in ("sqlite", "postgres"):
        t = targets[name]
        polls = sum(m.run.requests for m in t.runs + t.repeated)
        checks = _checks(warm[name], after[name], polls)
        full_checks = _checks(before[name], after[name], polls)
        checks["full"], checks["bcrypt"] = full_checks["full"], full_checks["bcrypt"]
        checks["other_status"] = full_checks["other_status"]
        checks["wrk_status_errors"] = sum(m.run.status_errors for m in t.runs + t.repeated)
        result.checks[name] = checks
    return result


# -- reporting -------------------------------------------------------------------------


def _db_per_poll(t: Target) -> tuple[float, float]:
    cpu = t.med(lambda m: m.db_cpu_s * 1e6 / max(1, m.run.requests))
    tx = t.med(lambda m: m.db_commits / max(1, m.run.requests))
    return cpu, tx


def summary_lines(result: PgPollResult) -> list[str]:
    s = result.settings
    lines = [
        f"no-change polls, SQLite and PostgreSQL {result.server_version}"
        f" (wrk -t1 -c{s.connections}, {s.runs} x {s.duration:g} s, medians):"
    ]
    for name, t in result.targets.items():
        share = "" if name == "bare" else f"  {result.ratio(name):6.1%} of bare"
        lines.append(
            f"  {name:9s} {t.rps:8.0f} req/s  p50 {t.med(lambda m: m.run.p50_ms):6.2f} ms"
            f"  p99 {t.med(lambda m: m.run.p99_ms):6.2f} ms"
            f"  {t.med(lambda m: m.cpu_us_per_request):6.1f} µs CPU/poll{share}"
        )
    cpu, tx = _db_per_poll(result.targets["postgres"])
    lines.append(f"  postgres: database backends {cpu:.1f} µs CPU/poll, {tx:.2f} commits/poll")
    for name in ("sqlite", "postgres"):
        c = result.checks[name]
        lines.append(
            f"  {name}: all 304 {'yes' if result.all_304(name) else 'NO'} ({c['not_modified']}"
            f" not_modified for {c['polls']} polls; full {c['full']}, other statuses"
            f" {c['other_status']}, bcrypt {c['bcrypt']})"
        )
    return lines


def results_markdown(result: PgPollResult, mode: str) -> str:
    s = result.settings
    out = [
        run_header(mode, result.load),
        "",
        f"PostgreSQL {result.server_version} on loopback, scratch database. `wrk -t1"
        f" -c{s.connections} -d{s.duration:g}s --latency` on core {s.client_cpu}, the three"
        f" servers on core {s.server_cpu}; {s.warmup:g} s warm-up each, then {s.runs}"
        " rotated run(s) each; medians of the undisturbed runs.",
        "",
        "| server | requests/s | share of bare | p50 | p99 | CPU per poll | of which database |"
        " per CPU second, vs bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in result.targets.items():
        share = "100%" if name == "bare" else f"**{result.ratio(name):.1%}**"
        per_cpu = "100%" if name == "bare" else f"{result.cpu_ratio(name):.1%}"
        db = f"{_db_per_poll(t)[0]:.1f} µs" if name == "postgres" else ""
        out.append(
            f"| {LABELS[name]} | {t.rps:,.0f} | {share} | {t.med(lambda m: m.run.p50_ms):.2f} ms"
            f" | {t.med(lambda m: m.run.p99_ms):.2f} ms"
            f" | {t.med(lambda m: m.cpu_us_per_request):.1f} µs | {db} | {per_cpu} |"
        )
    cpu, tx = _db_per_poll(result.targets["postgres"])
    pg_vs_lite = result.targets["postgres"].rps / result.targets["sqlite"].rps
    out += [
        "",
        f"* PostgreSQL against SQLite: **{pg_vs_lite:.1%}** of the requests/s;"
        f" {tx:.2f} committed transactions per poll in `pg_stat_database`; the backends"
        f" spent {cpu:.1f} µs of CPU per poll (not pinned: counted in the CPU per poll).",
    ]
    for name in ("sqlite", "postgres"):
        c = result.checks[name]
        out.append(
            f"* {LABELS[name]}: every poll a 304: **{'yes' if result.all_304(name) else 'NO'}**"
            f" ({c['not_modified']:,} `not_modified` for {c['polls']:,} completed by wrk;"
            f" {c['full']} full plans, {c['other_status']} other statuses); bcrypt calls:"
            f" {c['bcrypt']}."
        )
    repeated = sum(len(t.repeated) for t in result.targets.values())
    still = [n for n, t in result.targets.items() if any(m.disturbed for m in t.counted)]
    out.append(
        f"* Runs repeated because other processes used more than {s.max_foreign_load:g} core"
        f" (or, without a database, the server got under {s.min_core_share:.0%} of its core):"
        f" {repeated}."
        + (
            f" **Still disturbed after the retries:** {', '.join(still)} — trust the"
            " per-CPU-second column over requests/s."
            if still
            else ""
        )
    )
    out.append("")
    return "\n".join(out)


REPORT = Report(KEY, HEADING, "edgesync-bench-pgpoll-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("no-change polls on PostgreSQL:")
    return REPORT(
        lambda tmp: run(tmp, default_settings(quick)), quick=quick, write=write, json_path=json_path
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 x 3 s run per server")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--connections", type=int)
    args = REPORT.parse_args(parser, argv)
    settings = default_settings(args.quick)
    for name in ("duration", "runs", "connections"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    return REPORT.from_args(lambda tmp: run(tmp, settings), args)


if __name__ == "__main__":
    sys.exit(main())
