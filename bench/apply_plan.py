"""Benchmark 5: how long one agent takes to apply a release of 50 functions and 10 migrations.

``edgesync serve`` (subprocess, embedded SQLite and folder store) holds 10
schema migrations and 50 distinct function modules (``examples/echo.wat``, each
with its own data segment, so 50 hashes and 50 compiles). A fresh in-process
``agent.loop.Agent`` (the object ``edgesync agent`` runs) enrolls, then its
``sync_once()`` — heartbeat, plan, 50 downloads with SHA-256 checks and atomic
writes, 50 compiles, one libsql transaction with the 10 migrations and the
function table, activation, ack — is timed from an empty node to the acked
release. Every repetition uses a new node with a new data dir (nothing cached).

The breakdown comes from timing wrappers put on the agent's own objects (no
agent code changed): ``ArtifactCache.fetch`` (download, verify, write), the
runtime's ``prepare`` (compile; WasmEdge: AOT compile to a shared object),
``EdgeDatabase.apply_release`` (the transaction) and the API calls.

Baselines measured in the same run:

* the 50 artifacts fetched with plain sequential aiohttp GETs of the plan's own
  download URLs (bodies read and dropped: no hashing, no file);
* the 10 migrations applied with the stdlib ``sqlite3`` to a fresh WAL file in
  one transaction (statement by statement, as the agent does), nothing else;
  opening the file is not timed (the agent's database is open before the sync).

Run alone: ``.venv/bin/python bench/apply_plan.py [--quick] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BenchError, Server, background_load, call, edgesync_serve, expect
from bench.support import Report, echo_module, median, run_header, wasmedge_command

KEY, HEADING = "apply", "5. Applying a plan: results"
PHASES = ("plan", "download", "compile", "transaction", "ack", "other")
# Parts of the phases above, timed when the agent's private helpers are there to wrap.
DETAILS = {
    "durable": "download: fsync of each module and of its directory, rename",
    "cache": "compile (wasmtime): writing the serialized module (.cwasm, fsynced)",
    "start": "opening the runtime before the sync (WasmEdge: discovery and the first"
    " worker process), not in the total",
}
#: The issue's goals for applying 50 functions and 10 migrations from empty, seconds.
GOALS = {"wasmedge": 1.5, "wasmtime": 0.5}


@dataclass
class Settings:
    functions: int = 50
    migrations: int = 10
    repeats: int = 5
    runtimes: tuple[str, ...] = ("wasmtime", "wasmedge")

    @classmethod
    def quick(cls) -> Settings:
        return cls(repeats=1)


@dataclass
class Apply:
    runtime: str
    total: float
    phases: dict[str, float]
    outcome: str
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class ApplyResult:
    settings: Settings
    runs: dict[str, list[Apply]] = field(default_factory=dict)
    baseline_get: list[float] = field(default_factory=list)
    baseline_sqlite: list[float] = field(default_factory=list)
    module_bytes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)

    def med(self, runtime: str, phase: str | None = None) -> float:
        runs = self.runs[runtime]
        return median([r.total if phase is None else r.phases[phase] for r in runs])

    def detail(self, runtime: str, name: str) -> float | None:
        values = [r.details[name] for r in self.runs[runtime] if name in r.details]
        return median(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "runs": {k: [asdict(r) for r in v] for k, v in self.runs.items()},
            "baseline_get_seconds": self.baseline_get,
            "baseline_sqlite_seconds": self.baseline_sqlite,
            "module_bytes": self.module_bytes,
            "skipped": self.skipped,
            "load": self.load,
        }


# -- the control plane's content --------------------------------------------------------


def migration_sql(version: int) -> str:
    """A table, an index and 200 rows: a migration with some work in it."""
    return (
        f"CREATE TABLE bench_t{version} (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v INTEGER);\n"
        f"CREATE INDEX bench_t{version}_k ON bench_t{version} (k);\n"
        f"INSERT INTO bench_t{version} (k, v) WITH RECURSIVE n(i) AS"
        " (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)"
        " SELECT 'key-' || i, i * 7 FROM n;\n"
    )


def populate(server: Server, workdir: Path, settings: Settings) -> int:
    """Upload the distinct modules and add the migrations; returns the modules' total size."""
    from edgesync.client import ApiClient

    client = ApiClient(server.base, server.admin_token)
    total = 0
    for index in range(settings.functions):
        path = workdir / f"fn-{index:02d}.wasm"
        path.write_bytes(echo_module(f"fn-{index:02d}"))
        total += path.stat().st_size
        client.upload(f"fn-{index:02d}", "1.0.0", path)
    for version in range(1, settings.migrations + 1):
        body = {
            "version": version,
            "description": f"bench {version}",
            "up_sql": migration_sql(version),
        }
        expect(
            call(server.base, "POST", "/api/v1/schemas", headers=server.admin_headers(), body=body),
            201,
            f"add migration {version}",
        )
    return total


# -- timing the agent's own objects ------------------------------------------------------


class Stopwatch:
    def __init__(self) -> None:
        self.spent: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.spent.update(dict.fromkeys(DETAILS, 0.0))

    def sync(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[phase] += time.perf_counter() - started

        return timed

    def coro(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.spent[phase] += time.perf_counter() - started

        return timed


async def apply_once(
    server: Server, data_dir: Path, runtime: str, token: str, urls: list[str]
) -> Apply:
    from agent.config import AgentConfig
    from agent.loop import Agent
    from agent.runtime import open_runtime

    config = AgentConfig(
        server=server.base,
        data_dir=data_dir,
        enrollment_token=token,
        name=data_dir.name,
        runtime=runtime,
        gateway=None,
        mqtt=False,
    )
    import agent.artifacts as artifacts

    opening = time.perf_counter()
    instance = open_runtime(runtime, data_dir)
    opened = time.perf_counter() - opening
    agent = Agent(config, instance)
    originals = {name: getattr(artifacts, name, None) for name in ("_flush", "_publish")}
    try:
        await agent.open()  # enrollment: not timed
        assert agent.api is not None and agent.reconciler is not None
        watch = Stopwatch()
        reconciler, api = agent.reconciler, agent.api
        reconciler.cache.fetch = watch.coro("download", reconciler.cache.fetch)  # type: ignore[method-assign]
        _time_compiles(watch, reconciler.runtime)
        reconciler.database.apply_release = watch.sync(  # type: ignore[method-assign]
            "transaction", reconciler.database.apply_release
        )
        api.heartbeat = watch.coro("plan", api.heartbeat)  # type: ignore[method-assign]
        plan_call = watch.coro("plan", api.plan)

        async def plan(*args: Any, **kwargs: Any) -> Any:
            found = await plan_call(*args, **kwargs)
            if found is not None and not urls:
                urls.extend(a.download_url for a in found.actions if hasattr(a, "download_url"))
            return found

        api.plan = plan  # type: ignore[method-assign]
        api.ack = watch.coro("ack", api.ack)  # type: ignore[method-assign]
        details: set[str] = set()
        for name, function in originals.items():  # module globals, looked up at call time
            if callable(function):
                setattr(artifacts, name, watch.sync("durable", function))
                details.add("durable")
        store_compiled = getattr(reconciler.runtime, "_store_compiled", None)
        if callable(store_compiled):
            reconciler.runtime._store_compiled = watch.sync("cache", store_compiled)  # type: ignore[attr-defined]
            details.add("cache")
        started = time.perf_counter()
        outcome = await agent.sync_once()
        total = time.perf_counter() - started
        state = outcome.state
        if outcome.kind != "applied" or state is None:
            raise BenchError(f"{runtime}: sync_once ended {outcome.kind}: {outcome.error}")
        if len(state.functions) == 0 or state.schema_version == 0:
            raise BenchError(f"{runtime}: applied state is empty: {state}")
        phases = {k: watch.spent[k] for k in PHASES}
        phases["other"] = total - sum(v for k, v in phases.items() if k != "other")
        details.add("start")
        watch.spent["start"] = opened
        return Apply(runtime, total, phases, outcome.kind, {k: watch.spent[k] for k in details})
    finally:
        for name, function in originals.items():
            if function is not None:
                setattr(artifacts, name, function)
        await agent.close()


def _time_compiles(watch: Stopwatch, runtime: Any) -> None:
    """Time ``prepare`` and, when the agent uses it, ``prepare_many`` as "compile"
    (wall time: the compiles ``prepare_many`` runs in parallel are counted once)."""
    prepare, many = runtime.prepare, getattr(runtime, "prepare_many", None)
    inside = threading.local()

    def timed_prepare(*args: Any) -> Any:
        if getattr(inside, "many", False):
            return prepare(*args)
        return watch.sync("compile", prepare)(*args)

    runtime.prepare = timed_prepare
    if callable(many):
        timed_many = watch.sync("compile", many)

        def marked_many(*args: Any) -> Any:
            inside.many = True
            try:
                return timed_many(*args)
            finally:
                inside.many = False

        runtime.prepare_many = marked_many


# -- baselines -------------------------------------------------------------------------


async def plain_gets(urls: list[str]) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for url in urls:
            async with session.get(url) as response:
                if response.status != 200:
                    raise BenchError(f"baseline GET {url}: HTTP {response.status}")
                async for _ in response.content.iter_chunked(256 * 1024):
                    pass
        return time.perf_counter() - started


def sqlite_migrations(path: Path, count: int) -> float:
    from edgesync.sqlscript import split_statements

    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")  # as edge.db; opening is not timed
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        for version in range(1, count + 1):
            for statement in split_statements(migration_sql(version)):
                connection.execute(statement)
        connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()


# -- the benchmark ---------------------------------------------------------------------


async def _run(workdir: Path, server: Server, settings: Settings, log: Any) -> ApplyResult:
    result = ApplyResult(settings)
    runtimes = []
    for runtime in settings.runtimes:
        if runtime == "wasmedge" and wasmedge_command() is None:
            result.skipped[runtime] = "no working wasmedge (make wasmedge, or EDGESYNC_WASMEDGE)"
        else:
            runtimes.append(runtime)
    body = {"max_uses": settings.repeats * len(runtimes) + 1, "ttl_seconds": 3600}
    reply = call(
        server.base, "POST", "/api/v1/enrollment-tokens", headers=server.admin_headers(), body=body
    )
    token = expect(reply, 201, "enrollment token").json()["token"]
    urls: list[str] = []
    for repeat in range(settings.repeats):
        for runtime in runtimes:  # interleaved: drift hits every runtime alike
            data_dir = workdir / f"node-{runtime}-{repeat}"
            done = await apply_once(server, data_dir, runtime, token, urls)
            result.runs.setdefault(runtime, []).append(done)
            parts = ", ".join(f"{k} {v:.3f}" for k, v in done.phases.items())
            log(f"  {runtime:9s} run {repeat + 1}: {done.total:.3f} s ({parts})")
        if len(urls) != settings.functions:
            raise BenchError(f"expected {settings.functions} download URLs, saw {len(urls)}")
        result.baseline_get.append(await plain_gets(urls))
        db = workdir / f"baseline-{repeat}.db"
        result.baseline_sqlite.append(
            await asyncio.to_thread(sqlite_migrations, db, settings.migrations)
        )
        log(
            f"  baselines run {repeat + 1}: {settings.functions} plain GETs"
            f" {result.baseline_get[-1]:.3f} s, {settings.migrations} migrations with sqlite3"
            f" {result.baseline_sqlite[-1]:.3f} s"
        )
    return result


def run(workdir: Path, settings: Settings, log: Any = print) -> ApplyResult:
    load = background_load(0.5)
    with edgesync_serve(workdir) as server:
        size = populate(server, workdir, settings)
        result = asyncio.run(_run(workdir, server, settings, log))
    result.module_bytes = size
    result.load = load
    return result


# -- reporting -------------------------------------------------------------------------


def summary_lines(result: ApplyResult) -> list[str]:
    s = result.settings
    get, sql = median(result.baseline_get), median(result.baseline_sqlite)
    lines = [
        f"apply a plan ({s.functions} functions, {s.migrations} migrations, from empty;"
        f" medians of {s.repeats}):",
        f"  baselines: {s.functions} plain GETs {get * 1000:.0f} ms;"
        f" {s.migrations} migrations with sqlite3 {sql * 1000:.0f} ms",
    ]
    for runtime in result.runs:
        phases = ", ".join(f"{p} {result.med(runtime, p) * 1000:.0f}" for p in PHASES)
        lines.append(
            f"  {runtime:9s} total {result.med(runtime) * 1000:.0f} ms ({phases} ms);"
            f" download {result.med(runtime, 'download') / get:.1f}x plain GETs,"
            f" transaction {result.med(runtime, 'transaction') / sql:.1f}x sqlite3"
        )
        for key, label in DETAILS.items():
            value = result.detail(runtime, key)
            if value is not None:
                lines.append(f"    {label}: {value * 1000:.0f} ms")
    for runtime, why in result.skipped.items():
        lines.append(f"  {runtime}: skipped ({why})")
    return lines


def results_markdown(result: ApplyResult, mode: str) -> str:
    s = result.settings
    get, sql = median(result.baseline_get), median(result.baseline_sqlite)

    def ms(value: float) -> str:
        return f"{value * 1000:,.0f} ms"

    out = [
        run_header(mode, result.load),
        "",
        f"One agent, from an empty node to the acked release of {s.functions} distinct"
        f" functions ({result.module_bytes / max(1, s.functions):.0f} bytes each) and"
        f" {s.migrations} migrations; medians of {s.repeats} run(s), each on a new node.",
        "",
        "| runtime | total | plan (heartbeat + GET) | download + verify + write | compile |"
        " transaction | ack | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for runtime in result.runs:
        cells = " | ".join(ms(result.med(runtime, p)) for p in PHASES)
        out.append(f"| {runtime} | **{ms(result.med(runtime))}** | {cells} |")
    out += [
        "",
        "| baseline (same run) | time | agent's phase | ratio |",
        "|---|---:|---|---:|",
    ]
    for runtime in result.runs:
        out.append(
            f"| {s.functions} plain aiohttp GETs of the plan's URLs | {ms(get)}"
            f" | download, {runtime} | {result.med(runtime, 'download') / get:.1f}× |"
        )
        out.append(
            f"| {s.migrations} migrations with stdlib sqlite3, one transaction | {ms(sql)}"
            f" | transaction, {runtime} | {result.med(runtime, 'transaction') / sql:.1f}× |"
        )
    out.append("")
    for runtime in result.runs:
        for key, label in DETAILS.items():
            value = result.detail(runtime, key)
            if value is not None:
                out.append(f"* {runtime}, {label}: {ms(value)}.")
    for runtime in result.runs:
        total = result.med(runtime)
        goal = GOALS.get(runtime)
        if goal is not None:
            met = "met" if total <= goal else "**missed**"
            out.append(f"* Goal for {runtime}: at most {goal:g} s: {met} ({total:.2f} s).")
        out.append(
            f"* {runtime}: {total / (get + sql):.1f}× the two baselines together;"
            f" compile is {result.med(runtime, 'compile') / total:.0%} of the total"
            f" ({result.med(runtime, 'compile') / s.functions * 1000:.1f} ms per module)."
        )
    for runtime, why in result.skipped.items():
        out.append(f"* {runtime}: not measured ({why}).")
    out.append("")
    return "\n".join(out)


REPORT = Report(KEY, HEADING, "edgesync-bench-apply-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("apply a plan:")
    settings = Settings.quick() if quick else Settings()
    return REPORT(lambda tmp: run(tmp, settings), quick=quick, write=write, json_path=json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per runtime")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--functions", type=int)
    parser.add_argument("--migrations", type=int)
    parser.add_argument("--runtime", action="append", choices=["wasmtime", "wasmedge"])
    args = REPORT.parse_args(parser, argv)
    settings = Settings.quick() if args.quick else Settings()
    for name in ("repeats", "functions", "migrations"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.runtime:
        settings.runtimes = tuple(args.runtime)
    return REPORT.from_args(lambda tmp: run(tmp, settings), args)


if __name__ == "__main__":
    sys.exit(main())
