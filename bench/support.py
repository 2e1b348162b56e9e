"""Plumbing shared by the agent and backend benchmarks (benchmarks 4–8).

Beside ``bench/common.py`` (servers, HTTP, RSS, the machine), this holds what
those benchmarks add: WasmEdge discovery (the agent's own), the echo module (made distinct on
demand), wrk with a POST body, CPU time including reaped children, and each
benchmark's own marker-delimited block of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from bench.common import REPO, BenchError, busy_seconds, machine_info, pinned, wait_http

DOC = REPO / "docs" / "benchmarks.md"
OUT = REPO / "bench" / "out"


# -- WasmEdge ----------------------------------------------------------------------------


def wasmedge_command() -> str | None:
    """A working WasmEdge found as the agent finds it (``agent.runtime.find_wasmedge``:
    ``$EDGESYNC_WASMEDGE``, ``.wasmedge/`` from ``make wasmedge``, ``PATH``, the
    distribution's library); None without one. Never judged by ``--version``'s text,
    which starts with the executable's full path when it is run by one."""
    from agent.runtime import find_wasmedge

    installation = find_wasmedge()
    return installation.library if installation is not None else None


# -- modules -----------------------------------------------------------------------------


def echo_module(tag: str | None = None) -> bytes:
    """``examples/echo.wat`` compiled; with ``tag``, one extra data segment holding it,
    so that every tag gives a distinct module (distinct SHA-256, its own compile)."""
    import wasmtime

    source = (REPO / "examples" / "echo.wat").read_text()
    if tag is not None:
        # Past the 64 KiB read buffer at 1024, inside the module's 2 pages.
        segment = f'  (data (i32.const 70000) "edgesync-bench {tag}")\n)'
        head, _, _ = source.rstrip().rpartition(")")
        source = head + segment
    return bytes(wasmtime.wat2wasm(source))


# -- CPU and percentiles -----------------------------------------------------------------


def cpu_with_children(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children (cutime, cstime) and its live
    descendants: the WasmEdge runtime's worker processes count for the gateway."""
    total = 0
    for member in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


# -- wrk with a body ---------------------------------------------------------------------

WRK_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  io.write(string.format(
    '\\nBENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,'
    .. '"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class LoadRun:
    """One wrk run: its totals, latency percentiles and the server's CPU meanwhile."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    status_errors: int  # wrk counts statuses >= 400
    socket_errors: int
    server_cpu_s: float  # the server and its reaped children
    busy_cpu_s: float  # every CPU, every process

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s * 1e6 / self.requests if self.requests else 0.0


def wrk_post(
    url: str,
    body_file: Path,
    *,
    connections: int,
    duration: float,
    server_pid: int,
    cpu: int | None,
    workdir: Path,
) -> LoadRun:
    """``wrk -t1 -cN -dS --latency`` POSTing ``body_file`` to ``url``, pinned to ``cpu``."""
    script = workdir / "post.lua"
    if not script.exists():
        script.write_text(WRK_POST)
    # wrk takes whole seconds only.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    command += ["--timeout", "30s", "-s", str(script), url]
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file))
    cpu_before, busy_before = cpu_with_children(server_pid), busy_seconds()
    done = subprocess.run(
        pinned(command, cpu),
        capture_output=True,
        text=True,
        timeout=duration + 90,
        env=env,
        check=False,
    )
    server_cpu = cpu_with_children(server_pid) - cpu_before
    busy = busy_seconds() - busy_before
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return LoadRun(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        status_errors=data["status_errors"],
        socket_errors=data["socket_errors"],
        server_cpu_s=server_cpu,
        busy_cpu_s=busy,
    )


# -- processes ---------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    base: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def spawned(
    name: str,
    command: list[str],
    workdir: Path,
    *,
    base: str = "",
    ready_path: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[Process]:
    """``command`` as a subprocess logging to ``workdir/name.log``; waits for
    ``base + ready_path`` to answer 200 when given; stopped (SIGTERM) on exit."""
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ, PYTHONUNBUFFERED="1"),
            cwd=workdir,
        )
    handle = Process(name, process, log_path, base)
    try:
        if ready_path is not None:
            try:
                wait_http(base, ready_path, process, timeout)
            except BenchError as exc:
                raise BenchError(f"{name}: {exc}\n{handle.log_tail()}") from exc
        yield handle
    finally:
        handle.stop()


def wait_until(probe: Any, what: str, timeout: float = 60, interval: float = 0.1) -> Any:
    """Call ``probe()`` until it returns something truthy; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(interval)


# -- results -----------------------------------------------------------------------------


def run_header(mode: str, load: dict[str, float] | None = None) -> str:
    machine = machine_info()
    text = (
        f"Last run: **{machine['date']}** (`{mode}`) on {machine['cpu']},"
        f" {machine['cores']} cores, {machine['kernel']}, {machine['python']}"
        f" (aiohttp {machine['aiohttp']})."
    )
    if load:
        busy = ", ".join(f"{name} {value:.0%}" for name, value in sorted(load.items()))
        text += f" Load from other processes just before: {busy}."
    return text


def markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def write_block(key: str, heading: str, section: str) -> None:
    """Replace this benchmark's block of docs/benchmarks.md (its own markers); when
    the page has none yet, append ``## heading`` with an empty block first."""
    start, end = markers(key)
    text = DOC.read_text()
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    DOC.write_text(f"{head}{start}\n{section.rstrip()}\n{end}{tail}")


def save_json(name: str, data: Any, path: Path | None = None) -> Path:
    target = path or OUT / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return target


class _Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=_Result)


@dataclass(frozen=True)
class Report(Generic[R]):
    """How one benchmark reports: its block of docs/benchmarks.md (``key``, ``heading``),
    its scratch directory's prefix, its summary lines and its markdown section."""

    key: str
    heading: str
    tmp_prefix: str
    summary: Callable[[R], list[str]]
    markdown: Callable[[R, str], str]

    def __call__(
        self,
        run: Callable[[Path], R],
        *,
        quick: bool,
        write: bool,
        json_path: Path | None = None,
        timed: bool = False,
    ) -> int:
        """``run(scratch_dir)``; print its summary (and, ``timed``, the total seconds),
        save its JSON (``json_path`` or bench/out/KEY.json) and, with ``write``, its
        block of docs/benchmarks.md. 1 when the benchmark failed (BenchError), else 0."""
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=self.tmp_prefix) as tmp:
            try:
                result = run(Path(tmp))
            except BenchError as exc:
                print(f"benchmark failed: {exc}", file=sys.stderr)
                return 1
        print("\n".join(self.summary(result)))
        if timed:
            print(f"(total {time.monotonic() - started:.0f} s)")
        save_json(self.key, result.to_dict(), json_path)
        if write:
            write_block(self.key, self.heading, self.markdown(result, "quick" if quick else "full"))
        return 0

    @staticmethod
    def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
        """``parser`` with the options every benchmark ends with (``--json``,
        ``--write-docs``) added last, applied to ``argv``."""
        parser.add_argument("--json", type=Path)
        parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
        return parser.parse_args(argv)

    def from_args(self, run: Callable[[Path], R], args: argparse.Namespace) -> int:
        """The run as a script: ``--quick``, ``--write-docs``, ``--json``, total time shown."""
        return self(run, quick=args.quick, write=args.write_docs, json_path=args.json, timed=True)
