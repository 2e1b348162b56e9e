"""Run every example module under wasmtime (Python API) and WasmEdge (CLI) and check
that both runtimes agree on what it does.

    .venv/bin/python examples/check_examples.py [--build DIR] [--wasmedge PATH] [--bench]

Build the modules first with build/build_examples.sh, and WasmEdge with
build/wasmedge.sh (without it the WasmEdge half is skipped). Ends with the line
"N passed, N failed" and exits 1 when anything failed.

This is a standalone check of the examples, not the agent's runtime: it shows how each
runtime is driven (stdin/stdout files, env, argv, time and memory limits) and how each
reports a trap, a non-zero exit and a timeout (see examples/WASMEDGE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

HERE = Path(__file__).resolve().parent
PAGE = 65536

# WasmEdge 0.14's CLI logs with spdlog to *stdout*, interleaved with the module's own
# output: "[2026-11-30 01:32:31.439] [error] execution failed: unreachable, ...".
WASMEDGE_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[(\w+)\] .*\n?", re.M)


@dataclass
class Outcome:
    """What one invocation did, in runtime-neutral terms."""

    kind: str  # "ok", "exit" (non-zero proc_exit), "trap", "timeout"
    code: int = 0  # the proc_exit status for "exit", else 0
    stdout: bytes = b""
    stderr: bytes = b""
    message: str = ""
    seconds: float = 0.0


@dataclass
class Case:
    name: str
    module: str
    stdin: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    time_limit_ms: int | None = None
    memory_pages: int | None = None
    check: Callable[[Outcome], str | None] = lambda o: None


def run_wasmtime(path: Path, case: Case, workdir: Path) -> Outcome:
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.from_file(engine, str(path))
    store = wasmtime.Store(engine)
    if case.memory_pages is not None:
        # Bytes, for all memories of the store; memory.grow past it returns -1.
        store.set_limits(memory_size=case.memory_pages * PAGE)
    store.set_epoch_deadline(1)
    stdin, stdout, stderr = workdir / "in", workdir / "out", workdir / "err"
    stdin.write_bytes(case.stdin)
    wasi = wasmtime.WasiConfig()
    wasi.stdin_file = str(stdin)
    wasi.stdout_file = str(stdout)
    wasi.stderr_file = str(stderr)
    wasi.env = list(case.env.items())
    wasi.argv = [case.module.removesuffix(".wasm"), *case.args]
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    timer = None
    if case.time_limit_ms is not None:
        timer = threading.Timer(case.time_limit_ms / 1000, engine.increment_epoch)
        timer.start()
    started = time.perf_counter()
    try:
        instance = linker.instantiate(store, module)
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)
        outcome = Outcome("ok")
    except wasmtime.ExitTrap as exc:
        # proc_exit(0) raises too: it is a success.
        outcome = Outcome("ok" if exc.code == 0 else "exit", exc.code, message=str(exc))
    except wasmtime.Trap as exc:
        kind = "timeout" if exc.trap_code == wasmtime.TrapCode.INTERRUPT else "trap"
        outcome = Outcome(kind, message=str(exc).splitlines()[0])
    finally:
        if timer is not None:
            timer.cancel()
    outcome.seconds = time.perf_counter() - started
    outcome.stdout = stdout.read_bytes()
    outcome.stderr = stderr.read_bytes()
    return outcome


def run_wasmedge(wasmedge: str, path: Path, case: Case) -> Outcome:
    cmd = [wasmedge]
    for key, value in case.env.items():
        cmd += ["--env", f"{key}={value}"]
    if case.time_limit_ms is not None:
        cmd += ["--time-limit", str(case.time_limit_ms)]
    if case.memory_pages is not None:
        cmd += ["--memory-page-limit", str(case.memory_pages)]
    cmd += [str(path), *case.args]
    started = time.perf_counter()
    # --time-limit does not interrupt a blocking host call (fd_read on a pipe that
    # stays open) nor AOT code compiled without --interruptible: keep a hard limit.
    hard = None if case.time_limit_ms is None else case.time_limit_ms / 1000 + 5
    proc = subprocess.run(cmd, input=case.stdin, capture_output=True, timeout=hard or 60)
    seconds = time.perf_counter() - started
    logs = b"".join(m.group(0) for m in WASMEDGE_LOG.finditer(proc.stdout))
    stdout = WASMEDGE_LOG.sub(b"", proc.stdout)
    message = logs.decode(errors="replace").strip()
    code = 0
    if proc.returncode == 0:
        kind = "ok"
    elif proc.returncode == 134 and b"execution interrupted" in logs:
        kind = "timeout"
    elif proc.returncode == 134:
        kind = "trap"  # also "wasm function not found" and other runtime failures
    else:
        # proc_exit(n) becomes the process status n & 0xff; 1 is also WasmEdge's own
        # status for load/validation failures (with an [error] log line).
        kind, code = "exit", proc.returncode
    if kind != "exit" and proc.returncode:
        message = f"status {proc.returncode}: {message}"
    return Outcome(kind, code, stdout, proc.stderr, message, seconds)


def expect(
    kind: str,
    code: int = 0,
    stdout: bytes | None = None,
    stderr_has: bytes = b"",
    max_seconds: float | None = None,
) -> Callable[[Outcome], str | None]:
    def check(o: Outcome) -> str | None:
        if o.kind != kind or o.code != code:
            return f"expected {kind}/{code}, got {o.kind}/{o.code} {o.message!r}"
        if stdout is not None and o.stdout != stdout:
            return f"stdout {o.stdout[:200]!r}"
        if stderr_has not in o.stderr:
            return f"stderr {o.stderr[:200]!r} lacks {stderr_has!r}"
        if max_seconds is not None and o.seconds > max_seconds:
            return f"took {o.seconds:.2f} s"
        return None

    return check


def greet_check(body: str, env: dict[str, str], args: list[str]) -> Callable[[Outcome], str | None]:
    def check(o: Outcome) -> str | None:
        if o.kind != "ok":
            return f"expected ok, got {o.kind}/{o.code} {o.message!r}"
        try:
            doc = json.loads(o.stdout)
        except ValueError:
            return f"not JSON: {o.stdout[:200]!r}"
        want = {
            "greeting": f"hello, {body.strip() or 'world'}",
            "method": env.get("REQUEST_METHOD"),
            "path": env.get("PATH_INFO"),
            "query": env.get("QUERY_STRING"),
            "content_type": env.get("CONTENT_TYPE"),
            "content_length": env.get("CONTENT_LENGTH"),
            "body_bytes": len(body.encode()),
            "headers": {k: v for k, v in env.items() if k.startswith("HTTP_")},
        }
        got = {k: doc.get(k) for k in want}
        if got != want:
            return f"got {got}, want {want}"
        # argv[0] differs: wasmtime takes it from the embedder, WasmEdge uses the
        # module's file name ("greet.wasm", even for an AOT greet.so).
        if doc["argv"][1:] != args:
            return f"argv {doc['argv']}"
        return None

    return check


def cases() -> list[Case]:
    big = os.urandom(1 << 20)
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/functions/greet",
        "QUERY_STRING": 'a=1&b="two"',
        "CONTENT_TYPE": "text/plain; charset=utf-8",
        "CONTENT_LENGTH": "6",
        "HTTP_X_TRACE_ID": "abc123",
        "HTTP_USER_AGENT": "curl/8.0",
    }
    body = "Zoë\n"
    return [
        Case("echo", "echo.wasm", b"hello\nworld", check=expect("ok", stdout=b"hello\nworld")),
        Case("echo-empty", "echo.wasm", b"", check=expect("ok", stdout=b"")),
        Case("echo-1MiB", "echo.wasm", big, check=expect("ok", stdout=big)),
        Case(
            "greet",
            "greet.wasm",
            body.encode(),
            env,
            ["x", "y z"],
            check=greet_check(body, env, ["x", "y z"]),
        ),
        Case("greet-empty", "greet.wasm", check=greet_check("", {}, [])),
        Case("trap", "trap.wasm", check=expect("trap", stderr_has=b"about to trap")),
        Case("exit3", "exit3.wasm", check=expect("exit", 3, b"", b"exiting with status 3")),
        Case("exit0", "exit0.wasm", check=expect("ok", stdout=b"ok\n")),
        Case(
            "loop-500ms", "loop.wasm", time_limit_ms=500, check=expect("timeout", max_seconds=2.0)
        ),
        Case("grow", "grow.wasm", check=expect("ok", stdout=b"grew 1000 pages\n")),
        Case(
            "grow-limit-500",
            "grow.wasm",
            memory_pages=500,
            check=expect("trap", stdout=b"", stderr_has=b"memory.grow failed"),
        ),
        Case(
            "grow-limit-1001",
            "grow.wasm",
            memory_pages=1001,
            check=expect("ok", stdout=b"grew 1000 pages\n"),
        ),
    ]


def reactor_checks(build: Path, wasmedge: str | None) -> list[tuple[str, str | None]]:
    results: list[tuple[str, str | None]] = []
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module.from_file(engine, str(build / "add.wasm"))
    instance = wasmtime.Instance(store, module, [])
    add = instance.exports(store)["add"]
    assert isinstance(add, wasmtime.Func)
    got = add(store, 2, 3)
    results.append(("reactor-add [wasmtime]", None if got == 5 else f"add(2, 3) = {got}"))
    if wasmedge:
        proc = subprocess.run(
            [wasmedge, "--reactor", str(build / "add.wasm"), "add", "2", "3"],
            capture_output=True,
            timeout=30,
        )
        error = None
        if proc.returncode != 0 or proc.stdout != b"5\n":
            error = f"{proc.returncode} {proc.stdout!r}"
        results.append(("reactor-add [wasmedge]", error))
    return results


def bench(build: Path, wasmedge: str | None, n: int = 30) -> None:
    case = Case("echo", "echo.wasm", b"hello")
    with tempfile.TemporaryDirectory() as tmp:
        times = [run_wasmtime(build / "echo.wasm", case, Path(tmp)).seconds for _ in range(n)]
    median = statistics.median(times) * 1e3
    print(f"bench: wasmtime _start of echo.wasm (after compile), median {median:.2f} ms")
    if wasmedge:
        times = [run_wasmedge(wasmedge, build / "echo.wasm", case).seconds for _ in range(n)]
        median = statistics.median(times) * 1e3
        print(f"bench: wasmedge process running echo.wasm, median {median:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=HERE / "build")
    default_wasmedge = HERE.parent / ".wasmedge" / "bin" / "wasmedge"
    parser.add_argument(
        "--wasmedge",
        default=os.environ.get("WASMEDGE")
        or (str(default_wasmedge) if default_wasmedge.exists() else shutil.which("wasmedge")),
    )
    parser.add_argument("--bench", action="store_true", help="also time one invocation")
    opts = parser.parse_args()
    if not opts.wasmedge:
        print("wasmedge not found (run build/wasmedge.sh): checking wasmtime only")
    passed = failed = 0

    def report(label: str, error: str | None) -> None:
        nonlocal passed, failed
        print(f"{'PASS' if error is None else 'FAIL'} {label}" + (f": {error}" if error else ""))
        passed, failed = passed + (error is None), failed + (error is not None)

    with tempfile.TemporaryDirectory() as tmp:
        for case in cases():
            path = opts.build / case.module
            o = run_wasmtime(path, case, Path(tmp))
            report(f"{case.name} [wasmtime] {o.seconds * 1e3:.1f} ms", case.check(o))
            if opts.wasmedge:
                o = run_wasmedge(opts.wasmedge, path, case)
                report(f"{case.name} [wasmedge] {o.seconds * 1e3:.1f} ms", case.check(o))
    for label, error in reactor_checks(opts.build, opts.wasmedge):
        report(label, error)
    if opts.bench:
        bench(opts.build, opts.wasmedge)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
