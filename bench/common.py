"""Shared plumbing of the benchmarks: servers as subprocesses, HTTP, RSS, machine.

Everything here uses the standard library only, so that ``make bench`` runs
from a fresh checkout with nothing beyond the project's own dependencies
(and ``wrk``, ``taskset`` from the system).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, server did not start, bad answer)."""


# -- ports and HTTP ----------------------------------------------------------------------


def free_port() -> int:
    """An ephemeral port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def call(
    base: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 30,
) -> Reply:
    """One request; JSON-encodes ``body`` when it is not bytes. Header names lower-cased."""
    host, port = base.removeprefix("http://").split(":")
    payload: bytes | None
    if body is None or isinstance(body, bytes):
        payload = body
    else:
        payload = json.dumps(body).encode()
    sent = dict(headers or {})
    if payload is not None and "Content-Type" not in sent:
        sent["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, raw)
    finally:
        connection.close()


def expect(reply: Reply, status: int, what: str) -> Reply:
    if reply.status != status:
        raise BenchError(
            f"{what}: expected HTTP {status}, got {reply.status}: {reply.body[:300]!r}"
        )
    return reply


def wait_http(base: str, path: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll ``path`` until it answers 200; fail early when the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with code {process.returncode} before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if call(base, "GET", path, timeout=2).status == 200:
                return
        time.sleep(0.05)
    raise BenchError(f"{base}{path} did not answer 200 within {timeout:.0f} s")


# -- metrics -----------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format → ``{'name{labels}': value}`` (comments dropped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str, *label_parts: str) -> float:
    """Sum of the samples of ``name`` whose label set contains every ``label_parts``."""
    total = 0.0
    for key, value in samples.items():
        base, _, labels = key.partition("{")
        if base == name and all(part in labels for part in label_parts):
            total += value
    return total


# -- servers -----------------------------------------------------------------------------


def require_tools(*names: str) -> None:
    import shutil

    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise BenchError(
            f"missing tools: {', '.join(missing)} (install them, e.g. apt-get install)"
        )


def pinned(command: Sequence[str], cpu: int | None) -> list[str]:
    """``command`` under ``taskset -c cpu`` (taskset execs it: the pid stays the same)."""
    if cpu is None:
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


@dataclass
class Server:
    """A server subprocess on ``base``; its stderr goes to a log file in ``workdir``."""

    name: str
    base: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_token: str = ""
    data_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def metrics(self) -> dict[str, float]:
        reply = expect(call(self.base, "GET", "/metrics"), 200, "GET /metrics")
        return parse_metrics(reply.body.decode())

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _server(
    name: str, command: list[str], base: str, ready_path: str, workdir: Path, env: dict[str, str]
) -> Iterator[Server]:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir
        )
    server = Server(name, base, process, log_path)
    try:
        try:
            wait_http(base, ready_path, process)
        except BenchError as exc:
            raise BenchError(f"{name}: {exc}\n{server.log_tail()}") from exc
        yield server
    finally:
        _stop(process)


@contextlib.contextmanager
def edgesync_serve(
    workdir: Path,
    *,
    cpu: int | None = None,
    extra_args: Sequence[str] = (),
    access_log: bool = False,
) -> Iterator[Server]:
    """``edgesync serve`` with embedded defaults in a fresh data dir, on an ephemeral port.

    Access log off and log level warning unless ``access_log`` (serve's defaults: the
    poll benchmark and the fleet simulator measure them), a known admin token via
    the environment.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="serve-data-", dir=workdir))
    port = free_port()
    admin_token = secrets.token_urlsafe(32)
    env = dict(os.environ, EDGESYNC_ADMIN_TOKEN=admin_token, PYTHONUNBUFFERED="1")
    command = pinned(
        [
            PYTHON,
            "-m",
            "edgesync",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            # With the access log on, serve's default log level too (at "warning"
            # the access log's INFO lines would not be written at all).
            *([] if access_log else ["--no-access-log", "--log-level", "warning"]),
            *extra_args,
        ],
        cpu,
    )
    with _server("edgesync-serve", command, f"http://{HOST}:{port}", "/healthz", workdir, env) as s:
        s.admin_token = admin_token
        s.data_dir = data_dir
        yield s


@contextlib.contextmanager
def bare_app(workdir: Path, *, cpu: int | None = None) -> Iterator[Server]:
    """``bench/bare_app.py``: the same Python and aiohttp, one 304 route, nothing else."""
    port = free_port()
    command = pinned(
        [PYTHON, str(REPO / "bench" / "bare_app.py"), "--host", HOST, "--port", str(port)], cpu
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with _server("bare-aiohttp", command, f"http://{HOST}:{port}", "/healthz", workdir, env) as s:
        yield s


# -- memory ------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as handle:
        # The command name may hold spaces: the fields we need follow its ')'.
        fields = handle.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (all of its threads), via /proc/PID/task/*/children."""
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    children += [int(p) for p in handle.read().split()]
    return children


class RssSampler:
    """Samples a process's RSS (and, apart, its children's) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.child_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        value = rss_bytes(self.pid)
        if value is not None:
            self.samples.append((time.monotonic(), value))
        for child in child_pids(self.pid):
            self.child_peak = max(self.child_peak, rss_bytes(child) or 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def peak(self) -> int:
        return max(value for _, value in self.samples)


# -- the machine -------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import aiohttp

    return {
        "cpu": model,
        "cores": str(os.cpu_count() or 0),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": aiohttp.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    times: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            times[name] = (sum(values) - idle, sum(values))
    return times


def busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy (any process, the kernel, or stolen)."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(busy for busy, _ in _cpu_times().values()) / ticks


def background_load(seconds: float = 1.0) -> dict[str, float]:
    """How busy each CPU is before we start (other processes skew every figure)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    load = {}
    for name, (busy, total) in after.items():
        busy0, total0 = before.get(name, (busy, total))
        load[name] = (busy - busy0) / (total - total0) if total > total0 else 0.0
    return load


def wait_for_quiet(max_wait: float, threshold: float = 0.1, step: float = 0.5) -> float:
    """Wait until other processes use less than ``threshold`` cores in all, at most
    ``max_wait`` seconds; return the last load seen (in cores)."""
    deadline = time.monotonic() + max_wait
    while True:
        load = sum(background_load(step).values())
        if load < threshold or time.monotonic() >= deadline:
            return load


def mib(value: float) -> float:
    return value / (1024 * 1024)
