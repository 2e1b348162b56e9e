"""A release to a big fleet: N converged nodes each fetch the new plan, back to back.

Issue 10 item 7. ``edgesync serve`` (SQLite, defaults; ``--bcrypt-cost 4`` only so
that enrolling 10,000 nodes takes seconds) gets N nodes, each of which polls once
and holds the ETag of its empty plan, as a converged fleet does. Then a release
(a schema migration and a module) and every node asks for its plan with that ETag:
N full plans, served as fast as a pool of kept connections asks. Reported: the
time to serve them, plans per second, serve's CPU per plan, the sync records
written (one per node, never more), and how many distinct renderings the N plans
have once the per-node sync id and ETag are taken out (1: they share it).

Run alone: ``.venv/bin/python bench/plan_fanout.py [--quick] [--nodes N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BenchError, Server, call, cpu_seconds, edgesync_serve, expect
from bench.poll import tiny_module
from bench.support import Report, run_header

KEY = "plan-fanout"
HEADING = "A release to a big fleet (plan fan-out)"
CONCURRENCY = 32


@dataclass
class FanoutResult:
    nodes: int
    seconds: float = 0.0
    serve_cpu_seconds: float = 0.0
    sync_records: int = 0
    distinct_renderings: int = 0
    errors: int = 0
    header: str = ""

    @property
    def plans_per_second(self) -> float:
        return self.nodes / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_plan(self) -> float:
        return self.serve_cpu_seconds / self.nodes * 1e6 if self.nodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "plans_per_second": self.plans_per_second,
            "cpu_us_per_plan": self.cpu_us_per_plan,
        }


async def _pool(jobs: list[Any], worker: Any) -> list[Any]:
    """Run ``worker(job)`` over ``jobs`` with ``CONCURRENCY`` at a time, in order."""
    results: list[Any] = [None] * len(jobs)
    cursor = iter(range(len(jobs)))

    async def lane() -> None:
        for index in cursor:
            results[index] = await worker(jobs[index])

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    return results


async def _enroll(base: str, enrollment: str, count: int) -> list[tuple[str, str, str]]:
    """``count`` nodes, each registered and holding its empty plan's ETag."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def one(index: int) -> tuple[str, str, str]:
            body = {"name": f"fleet-{index}", "enrollment_token": enrollment}
            async with session.post("/api/v1/nodes/register", json=body) as response:
                if response.status != 201:
                    raise BenchError(f"register: {response.status} {await response.text()}")
                answer = await response.json()
            node_id, token = answer["node_id"], answer["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"/api/v1/nodes/{node_id}/sync", headers=headers) as response:
                if response.status != 200:
                    text = await response.text()
                    raise BenchError(f"first poll of node {index}: {response.status} {text}")
                etag = response.headers["ETag"]
            return node_id, token, etag

        return await _pool(list(range(count)), one)


async def _fetch_plans(base: str, nodes: list[tuple[str, str, str]]) -> list[Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def one(node: tuple[str, str, str]) -> Any:
            node_id, token, etag = node
            headers = {"Authorization": f"Bearer {token}", "If-None-Match": etag}
            async with session.get(f"/api/v1/nodes/{node_id}/sync", headers=headers) as response:
                if response.status != 200:
                    return None
                return await response.json()

        return await _pool(nodes, one)


def _shared_part(plan: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in plan.items() if k not in ("sync_id", "etag")})


def _release(server: Server, workdir: Path) -> None:
    from edgesync.client import ApiClient

    admin = server.admin_headers()
    schema = {"version": 1, "up_sql": "CREATE TABLE fanout_kv (k TEXT PRIMARY KEY, v TEXT);"}
    expect(call(server.base, "POST", "/api/v1/schemas", headers=admin, body=schema), 201, "schema")
    ApiClient(server.base, server.admin_token).upload("fanout-fn", "1.0.0", tiny_module(workdir))


def run(workdir: Path, nodes: int = 10_000, log: Any = print) -> FanoutResult:
    result = FanoutResult(nodes, header=run_header("quick" if nodes < 10_000 else "full"))
    with edgesync_serve(workdir, extra_args=["--bcrypt-cost", "4"]) as server:
        body = {"max_uses": nodes, "ttl_seconds": 24 * 3600}
        enrollment = expect(
            call(server.base, "POST", "/api/v1/enrollment-tokens", headers=server.admin_headers(),
                 body=body),
            201,
            "enrollment token",
        ).json()["token"]  # fmt: skip
        log(f"  enrolling {nodes} nodes (each polls once: a converged fleet)")
        fleet = asyncio.run(_enroll(server.base, enrollment, nodes))
        _release(server, workdir)
        log(f"  release published; {nodes} nodes fetch their plans")
        cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
        plans = asyncio.run(_fetch_plans(server.base, fleet))
        result.seconds = time.perf_counter() - started
        result.serve_cpu_seconds = cpu_seconds(server.pid) - cpu_before
        assert server.data_dir is not None
        with sqlite3.connect(server.data_dir / "edgesync.db") as db:
            (result.sync_records,) = db.execute("SELECT COUNT(*) FROM sync_records").fetchone()
    result.errors = sum(1 for plan in plans if plan is None or not plan["actions"])
    result.distinct_renderings = len({_shared_part(p) for p in plans if p is not None})
    return result


def summary_lines(result: FanoutResult) -> list[str]:
    return [
        f"plan fan-out: {result.nodes} full plans back to back ({CONCURRENCY} kept connections)",
        f"  {result.seconds:.2f} s, {result.plans_per_second:.0f} plans/s,"
        f" {result.cpu_us_per_plan:.0f} µs serve CPU per plan",
        f"  sync records written {result.sync_records} (one per node);"
        f" distinct renderings {result.distinct_renderings}; errors {result.errors}",
    ]


def results_markdown(result: FanoutResult, mode: str) -> str:
    return "\n".join(
        [
            result.header,
            "",
            "| nodes | time to serve every plan | plans/s | serve CPU per plan |"
            " sync records | distinct renderings | errors |",
            "|---|---|---|---|---|---|---|",
            f"| {result.nodes} | {result.seconds:.2f} s | {result.plans_per_second:.0f} |"
            f" {result.cpu_us_per_plan:.0f} µs | {result.sync_records} |"
            f" {result.distinct_renderings} | {result.errors} |",
            "",
            "The load generator (Python, same box) shares the two cores with serve: the"
            " CPU per plan is the figure to compare, not the wall time.",
        ]
    )


REPORT = Report(KEY, HEADING, "edgesync-bench-fanout-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("Plan fan-out:")
    return REPORT(lambda tmp: run(tmp, 1_000 if quick else 10_000), quick=quick, write=write,
                  json_path=json_path)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes")
    parser.add_argument("--nodes", type=int)
    args = REPORT.parse_args(parser, argv)
    count = args.nodes or (1_000 if args.quick else 10_000)
    return REPORT.from_args(lambda tmp: run(tmp, count), args)


if __name__ == "__main__":
    sys.exit(main())
