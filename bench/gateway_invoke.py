"""Benchmark 4: invoking a function through the agent's gateway, per runtime.

The agent's real gateway (``agent.gateway.make_gateway`` over a real runtime,
served by aiohttp exactly as ``edgesync agent`` serves it) with
``examples/echo.wat`` deployed as ``echo``, against a bare aiohttp handler that
echoes the body in Python (same interpreter, same aiohttp, same route shape),
in the same run. Each server is a subprocess pinned to core 0 (``taskset -c
0``; the WasmEdge runtime's worker processes inherit the pin); ``wrk`` POSTs the
same body from core 1. The goals of the WasmEdge C API work are checked as ratios
to the bare echo measured in the same run (:data:`GOALS`).

Two loads per server: one connection (the latency of a single invocation with
nothing queued) and ``--connections`` connections (the rate at saturation).

Run alone: ``.venv/bin/python bench/gateway_invoke.py [--quick] [--write-docs]``.
Serves one target (used by the benchmark itself):
``bench/gateway_invoke.py server --runtime bare|wasmtime|wasmedge --port N ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    PYTHON,
    BenchError,
    background_load,
    call,
    free_port,
    pinned,
    require_tools,
)
from bench.support import (
    LoadRun,
    Report,
    echo_module,
    median,
    run_header,
    spawned,
    wasmedge_command,
    wrk_post,
)

KEY, HEADING = "gateway", "4. Gateway invoke latency: results"
#: Goals: p50 at one connection at most this many times the bare echo's ...
P50_GOAL_RATIO = 2.0
#: ... p99 at one connection at most this (ms) ...
P99_GOAL_MS = 5.0
#: ... and at 16 connections at least this share of the bare echo's rate.
SHARE_GOALS = {"wasmedge": 0.25, "wasmtime": 0.30}
SERVER_CPU, CLIENT_CPU = 0, 1
LABELS = {
    "bare": "bare aiohttp echo (baseline)",
    "wasmtime": "gateway, wasmtime",
    "wasmedge": "gateway, WasmEdge",
}


@dataclass
class Settings:
    duration: float = 5.0
    warmup: float = 1.0
    runs: int = 1
    connections: int = 16
    body_bytes: int = 1024
    runtimes: tuple[str, ...] = ("wasmtime", "wasmedge")

    @classmethod
    def quick(cls) -> Settings:
        return cls(duration=2.0, warmup=1.0)


@dataclass
class Target:
    name: str
    single: list[LoadRun] = field(default_factory=list)  # one connection
    loaded: list[LoadRun] = field(default_factory=list)  # --connections

    def med(self, runs: list[LoadRun], attr: str) -> float:
        return median([getattr(r, attr) for r in runs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "single": [{**asdict(r), "rps": r.rps} for r in self.single],
            "loaded": [{**asdict(r), "rps": r.rps} for r in self.loaded],
        }


@dataclass
class GatewayResult:
    settings: Settings
    targets: dict[str, Target] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # runtime -> why
    load: dict[str, float] = field(default_factory=dict)

    def errors(self) -> int:
        return sum(
            r.status_errors + r.socket_errors
            for t in self.targets.values()
            for r in t.single + t.loaded
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "targets": {k: t.to_dict() for k, t in self.targets.items()},
            "skipped": self.skipped,
            "load": self.load,
        }


# -- the servers (subprocesses) --------------------------------------------------------


async def bare_echo(request: Any) -> Any:
    from aiohttp import web

    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def healthz(request: Any) -> Any:
    from aiohttp import web

    return web.Response(text="ok")


def serve_target(runtime: str, port: int, module: Path | None, data_dir: Path | None) -> None:
    """``server`` subcommand: the bare echo, or the agent's gateway over ``runtime``."""
    from aiohttp import web

    if runtime == "bare":
        app = web.Application()
        app.router.add_post("/functions/{name}", bare_echo)
        app.router.add_get("/healthz", healthz)
    else:
        from agent.gateway import make_gateway
        from agent.runtime import open_runtime
        from agent.runtime.base import Limits, module_path
        from edgesync.protocol import FunctionRef

        assert module is not None and data_dir is not None
        wasm = module.read_bytes()
        sha256 = hashlib.sha256(wasm).hexdigest()
        target = module_path(data_dir, sha256)  # where the agent keeps verified modules
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wasm)
        instance = open_runtime(runtime, data_dir)
        instance.prepare(sha256, target)
        instance.activate({"echo": FunctionRef("echo", "1.0.0", sha256)})
        app = make_gateway(instance, Limits())  # edgesync agent's defaults: 10 s, 128 MiB
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


# -- the benchmark ---------------------------------------------------------------------


def run(workdir: Path, settings: Settings, log: Any = print) -> GatewayResult:
    require_tools("wrk", "taskset")
    result = GatewayResult(settings, load=background_load(0.5))
    module = workdir / "echo.wasm"
    module.write_bytes(echo_module())
    body = os.urandom(settings.body_bytes // 2).hex().encode()[: settings.body_bytes]
    body_file = workdir / "body.bin"
    body_file.write_bytes(body)
    names = ["bare"]
    for runtime in settings.runtimes:
        if runtime == "wasmedge" and wasmedge_command() is None:
            result.skipped[runtime] = "no working wasmedge (make wasmedge, or EDGESYNC_WASMEDGE)"
            continue
        names.append(runtime)
    for name in names:
        port = free_port()
        data_dir = workdir / f"gateway-{name}"
        command = [PYTHON, str(Path(__file__).resolve()), "server", "--runtime", name]
        command += ["--port", str(port), "--module", str(module), "--data-dir", str(data_dir)]
        base = f"http://{HOST}:{port}"
        with spawned(
            f"gateway-{name}",
            pinned(command, SERVER_CPU),
            workdir,
            base=base,
            ready_path="/healthz",
            env=_env(),
        ) as server:
            reply = call(base, "POST", "/functions/echo", body=body, headers=_octets())
            if reply.status != 200 or reply.body != body:
                raise BenchError(f"{name}: echo answered {reply.status}: {reply.body[:200]!r}")
            target = Target(LABELS[name])
            url = f"{base}/functions/echo"

            def load(
                connections: int, seconds: float, url: str = url, pid: int = server.pid
            ) -> LoadRun:
                return wrk_post(
                    url,
                    body_file,
                    connections=connections,
                    duration=seconds,
                    server_pid=pid,
                    cpu=CLIENT_CPU,
                    workdir=workdir,
                )

            load(settings.connections, settings.warmup)
            for _ in range(settings.runs):
                loads = ((1, target.single), (settings.connections, target.loaded))
                for connections, runs in loads:
                    measured = load(connections, settings.duration)
                    runs.append(measured)
                    log(
                        f"  {name:9s} c={connections:<3d} {measured.rps:8.0f} req/s"
                        f"  p50 {measured.p50_ms:7.2f} ms  p99 {measured.p99_ms:7.2f} ms"
                        f"  {measured.cpu_us_per_request:8.0f} µs server CPU/req"
                        f"  errors {measured.status_errors + measured.socket_errors}"
                    )
            result.targets[name] = target
    return result


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _octets() -> dict[str, str]:
    return {"Content-Type": "application/octet-stream"}


# -- reporting -------------------------------------------------------------------------


def summary_lines(result: GatewayResult) -> list[str]:
    s = result.settings
    bare = result.targets["bare"]
    lines = [
        f"gateway invoke ({s.body_bytes} B echo; wrk on core {CLIENT_CPU}, servers on core"
        f" {SERVER_CPU}; medians of {s.runs} x {s.duration:g} s):"
    ]
    for target in result.targets.values():
        one, many = target.single, target.loaded
        lines.append(
            f"  {target.name:30s} c=1: p50 {target.med(one, 'p50_ms'):7.2f} ms"
            f" p99 {target.med(one, 'p99_ms'):7.2f} ms ({target.med(one, 'rps'):6.0f} req/s)"
            f" | c={s.connections}: {target.med(many, 'rps'):6.0f} req/s"
            f" = {target.med(many, 'rps') / bare.med(bare.loaded, 'rps'):6.1%} of bare,"
            f" p99 {target.med(many, 'p99_ms'):7.2f} ms,"
            f" {target.med(many, 'cpu_us_per_request'):7.0f} µs CPU/req"
        )
    for runtime, why in result.skipped.items():
        lines.append(f"  {runtime}: skipped ({why})")
    lines.append(f"  failed requests (status >= 400 or socket errors): {result.errors()}")
    return lines


def results_markdown(result: GatewayResult, mode: str) -> str:
    s = result.settings
    bare = result.targets["bare"]
    bare_rps = bare.med(bare.loaded, "rps")
    bare_p50 = bare.med(bare.single, "p50_ms")
    out = [
        run_header(mode, result.load),
        "",
        f"A {s.body_bytes}-byte body POSTed to `/functions/echo`; `wrk -t1 --latency` on core"
        f" {CLIENT_CPU}, each server alone on core {SERVER_CPU}; {s.warmup:g} s warm-up, then"
        f" {s.runs} run(s) of {s.duration:g} s per load (medians).",
        "",
        "| server | 1 conn.: p50 | p99 | req/s | p50 vs bare |"
        f" {s.connections} conn.: req/s | share of bare | p50 | p99 | server CPU per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in result.targets.values():
        one, many = target.single, target.loaded
        p50 = target.med(one, "p50_ms")
        out.append(
            f"| {target.name} | {p50:.2f} ms | {target.med(one, 'p99_ms'):.2f} ms"
            f" | {target.med(one, 'rps'):,.0f} | {p50 / bare_p50:.1f}×"
            f" | {target.med(many, 'rps'):,.0f} | **{target.med(many, 'rps') / bare_rps:.1%}**"
            f" | {target.med(many, 'p50_ms'):.2f} ms | {target.med(many, 'p99_ms'):.2f} ms"
            f" | {target.med(many, 'cpu_us_per_request'):,.0f} µs |"
        )
    out.append("")
    out.append(
        f"* Failed requests (status ≥ 400 or socket errors) in all runs: **{result.errors()}**;"
        " every server's answer to the body was checked once before the runs."
    )
    out.append(
        "* Server CPU per request includes the WasmEdge runtime's worker processes (the"
        " gateway's live descendants, read from `/proc`)."
    )
    out += goal_lines(result)
    for runtime, why in result.skipped.items():
        out.append(f"* {runtime}: not measured ({why}).")
    out.append("")
    return "\n".join(out)


def goal_lines(result: GatewayResult) -> list[str]:
    """Each runtime against the goals, as ratios to the bare echo of the same run."""
    s = result.settings
    bare = result.targets["bare"]
    bare_p50, bare_rps = bare.med(bare.single, "p50_ms"), bare.med(bare.loaded, "rps")
    lines = []
    for name, target in result.targets.items():
        if name == "bare":
            continue
        p50 = target.med(target.single, "p50_ms")
        p99 = target.med(target.single, "p99_ms")
        share = target.med(target.loaded, "rps") / bare_rps
        checks = [
            (
                f"p50 at 1 conn. ≤ {P50_GOAL_RATIO:g}× bare",
                p50 / bare_p50 <= P50_GOAL_RATIO,
                f"{p50 / bare_p50:.1f}×",
            ),
            (f"p99 at 1 conn. ≤ {P99_GOAL_MS:g} ms", p99 <= P99_GOAL_MS, f"{p99:.2f} ms"),
            (
                f"rate at {s.connections} conn. ≥ {SHARE_GOALS[name]:.0%} of bare",
                share >= SHARE_GOALS[name],
                f"{share:.1%}",
            ),
        ]
        verdicts = "; ".join(
            f"{what}: {'met' if ok else '**missed**'} ({value})" for what, ok, value in checks
        )
        lines.append(f"* Goals, {target.name}: {verdicts}.")
    return lines


REPORT = Report(KEY, HEADING, "edgesync-bench-gw-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("gateway invoke:")
    settings = Settings.quick() if quick else Settings()
    return REPORT(lambda tmp: run(tmp, settings), quick=quick, write=write, json_path=json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("server")
    server.add_argument("--runtime", choices=["bare", "wasmtime", "wasmedge"], required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--module", type=Path)
    server.add_argument("--data-dir", type=Path)
    parser.add_argument("--quick", action="store_true", help="2 s runs after a 1 s warm-up")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--connections", type=int)
    parser.add_argument("--body-bytes", type=int)
    parser.add_argument("--runtime", action="append", choices=["wasmtime", "wasmedge"])
    args = REPORT.parse_args(parser, argv)
    if args.command == "server":
        serve_target(args.runtime, args.port, args.module, args.data_dir)
        return 0
    settings = Settings.quick() if args.quick else Settings()
    for name in ("duration", "runs", "connections", "body_bytes"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.runtime:
        settings.runtimes = tuple(args.runtime)
    return REPORT.from_args(lambda tmp: run(tmp, settings), args)


if __name__ == "__main__":
    sys.exit(main())
