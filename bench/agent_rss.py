"""Benchmark 6: the resident memory of an idle ``edgesync agent``, with 0 and with 20 functions.

A real ``edgesync agent`` process (wasmtime runtime, gateway on a loopback
port, ``--poll-interval 1``, no MQTT) against ``edgesync serve`` (embedded
defaults). Its VmRSS (and the anonymous part of it, RssAnon) is sampled from
``/proc/PID/status`` every 100 ms over a few seconds, after convergence and a
short settling pause, in four states of the same run:

1. converged with **0 functions** (the baseline);
2. the same process after 20 distinct functions were uploaded and it applied
   them (``examples/echo.wat`` with a distinct data segment each);
3. the same process after one gateway invocation of each of the 20;
4. a fresh start of the agent on the same data dir (the 20 modules loaded from
   its compiled cache at start-up), idle.

Idle means: no invocation during sampling; the agent keeps polling (a 304
every second).

Run alone: ``.venv/bin/python bench/agent_rss.py [--quick] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    PYTHON,
    BenchError,
    Server,
    background_load,
    call,
    edgesync_serve,
    expect,
    free_port,
    mib,
)
from bench.support import (
    Process,
    Report,
    echo_module,
    median,
    run_header,
    spawned,
    wait_until,
)

KEY, HEADING = "agent-rss", "6. Agent idle RSS: results"


@dataclass
class Settings:
    functions: int = 20
    settle: float = 2.0  # after convergence, before sampling
    sample_seconds: float = 5.0
    interval: float = 0.1

    @classmethod
    def quick(cls) -> Settings:
        return cls(settle=1.0, sample_seconds=2.0)


@dataclass
class Sample:
    label: str
    functions: int
    rss: list[int]
    anon: list[int]

    @property
    def rss_median(self) -> float:
        return median(self.rss)

    @property
    def anon_median(self) -> float:
        return median(self.anon)


@dataclass
class RssResult:
    settings: Settings
    samples: list[Sample] = field(default_factory=list)
    load: dict[str, float] = field(default_factory=dict)

    @property
    def baseline(self) -> Sample:
        return self.samples[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "samples": [
                {**asdict(s), "rss_median": s.rss_median, "anon_median": s.anon_median}
                for s in self.samples
            ],
            "load": self.load,
        }


def memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) of ``pid`` in bytes (the rest is file-backed or shared memory)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    values[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(values) != 2:
        return None
    return values["VmRSS"], values["RssAnon"]


def sample(agent: Process, label: str, functions: int, settings: Settings) -> Sample:
    time.sleep(settings.settle)
    rss, anon = [], []
    deadline = time.monotonic() + settings.sample_seconds
    while time.monotonic() < deadline:
        found = memory(agent.pid)
        if found is None:
            raise BenchError(f"the agent exited:\n{agent.log_tail()}")
        rss.append(found[0])
        anon.append(found[1])
        time.sleep(settings.interval)
    return Sample(label, functions, rss, anon)


def edgesync_argv() -> list[str]:
    script = Path(PYTHON).with_name("edgesync")
    return [str(script)] if script.exists() else [PYTHON, "-m", "edgesync"]


@contextmanager
def agent_process(
    server: Server, data_dir: Path, workdir: Path, name: str, token: str | None
) -> Iterator[Process]:
    port = free_port()
    command = [
        *edgesync_argv(),
        "agent",
        *("--server", server.base, "--data-dir", str(data_dir)),
        *("--runtime", "wasmtime", "--poll-interval", "1", "--no-mqtt"),
        *("--gateway", f"{HOST}:{port}", "--log-level", "warning"),
        *(("--enrollment-token", token) if token else ()),
    ]
    base = f"http://{HOST}:{port}"
    with spawned(name, command, workdir, base=base, ready_path="/healthz") as process:
        yield process


def converged(agent: Process, data_dir: Path, functions: int) -> bool:
    """The gateway serves ``functions`` functions and the last sync ended well."""
    reply = call(agent.base, "GET", "/healthz")
    if reply.status != 200 or reply.json().get("functions") != functions:
        return False
    try:
        status = json.loads((data_dir / "agent-status.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("last_outcome") in ("converged", "unchanged", "applied")


def run(workdir: Path, settings: Settings, log: Any = print) -> RssResult:
    from edgesync.client import ApiClient

    result = RssResult(settings, load=background_load(0.5))
    data_dir = workdir / "node"
    with edgesync_serve(workdir) as server:
        body = {"max_uses": 1, "ttl_seconds": 3600}
        reply = call(
            server.base,
            "POST",
            "/api/v1/enrollment-tokens",
            headers=server.admin_headers(),
            body=body,
        )
        token = expect(reply, 201, "enrollment token").json()["token"]

        def measure(agent: Process, label: str, functions: int) -> None:
            wait_until(lambda: converged(agent, data_dir, functions), f"{label}: convergence")
            found = sample(agent, label, functions, settings)
            result.samples.append(found)
            log(
                f"  {label:42s} VmRSS {mib(found.rss_median):6.1f} MiB"
                f" (max {mib(max(found.rss)):.1f}), RssAnon {mib(found.anon_median):6.1f} MiB"
            )

        with agent_process(server, data_dir, workdir, "agent-1", token) as agent:
            measure(agent, "idle, 0 functions (baseline)", 0)
            client = ApiClient(server.base, server.admin_token)
            for index in range(settings.functions):
                path = workdir / f"fn-{index:02d}.wasm"
                path.write_bytes(echo_module(f"rss-{index:02d}"))
                client.upload(f"fn-{index:02d}", "1.0.0", path)
            measure(agent, f"idle, {settings.functions} functions applied", settings.functions)
            for index in range(settings.functions):
                reply = call(agent.base, "POST", f"/functions/fn-{index:02d}", body=b"ping")
                if reply.status != 200 or reply.body != b"ping":
                    raise BenchError(f"invoke fn-{index:02d}: {reply.status} {reply.body[:200]!r}")
            measure(agent, "idle, after one invocation of each", settings.functions)
        with agent_process(server, data_dir, workdir, "agent-2", None) as agent:
            measure(agent, "idle, restarted with them", settings.functions)
    return result


# -- reporting -------------------------------------------------------------------------


def summary_lines(result: RssResult) -> list[str]:
    base = result.baseline
    lines = [
        f"agent idle RSS (wasmtime, median of {result.settings.sample_seconds:g} s of samples):"
    ]
    for s in result.samples:
        growth = s.rss_median - base.rss_median
        lines.append(
            f"  {s.label:42s} {mib(s.rss_median):6.1f} MiB"
            f" ({s.rss_median / base.rss_median:5.2f}x baseline, {mib(growth):+.1f} MiB"
            + (f", {growth / s.functions / 1024:+.0f} KiB per function" if s.functions else "")
            + f"); RssAnon {mib(s.anon_median):.1f} MiB"
        )
    return lines


def results_markdown(result: RssResult, mode: str) -> str:
    s = result.settings
    base = result.baseline
    out = [
        run_header(mode, result.load),
        "",
        "A real `edgesync agent` process (wasmtime, gateway on, `--poll-interval 1`, no MQTT);"
        f" VmRSS and RssAnon from `/proc/PID/status` every {s.interval * 1000:.0f} ms for"
        f" {s.sample_seconds:g} s after {s.settle:g} s of settling (medians).",
        "",
        "| agent state | functions | VmRSS | vs 0 functions | per function | RssAnon |"
        " file-backed and shared |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for sample_ in result.samples:
        growth = sample_.rss_median - base.rss_median
        per = f"{growth / sample_.functions / 1024:+,.0f} KiB" if sample_.functions else ""
        ratio = (
            "baseline" if sample_ is base else f"**{sample_.rss_median / base.rss_median:.2f}×**"
        )
        out.append(
            f"| {sample_.label} | {sample_.functions} | {mib(sample_.rss_median):.1f} MiB"
            f" ({mib(growth):+.1f}) | {ratio} | {per} | {mib(sample_.anon_median):.1f} MiB"
            f" | {mib(sample_.rss_median - sample_.anon_median):.1f} MiB |"
        )
    spread = max(mib(max(x.rss) - min(x.rss)) for x in result.samples)
    out += [
        "",
        f"* Largest spread of VmRSS within one sampling window: {spread:.1f} MiB.",
        "",
    ]
    return "\n".join(out)


REPORT = Report(KEY, HEADING, "edgesync-bench-rss-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("agent idle RSS:")
    settings = Settings.quick() if quick else Settings()
    return REPORT(lambda tmp: run(tmp, settings), quick=quick, write=write, json_path=json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s settle, 2 s of samples")
    parser.add_argument("--functions", type=int)
    parser.add_argument("--sample-seconds", type=float)
    args = REPORT.parse_args(parser, argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.functions is not None:
        settings.functions = args.functions
    if args.sample_seconds is not None:
        settings.sample_seconds = args.sample_seconds
    return REPORT.from_args(lambda tmp: run(tmp, settings), args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
