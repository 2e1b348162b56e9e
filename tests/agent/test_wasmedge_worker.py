"""WasmEdge's worker processes: what only a pool of processes can get wrong.

Real workers (the C API under WasmEdge's own loader where needed), real signals.
The shared behaviour of both runtimes is in ``test_runtimes.py``; this is about a
worker dying mid-call, AOT code the stop cannot reach, many calls at once, memory a
module declares, and the agent's own stdio.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_runtimes import (
    BIG_MINIMUM,
    ECHO,
    ENVIRON,
    LOOP,
    RECURSE_AFTER_OUTPUT,
    TRAP,
    _wasmedge_or_skip,
    deploy,
    store_module,
    wasm_of,
)

from agent.runtime.base import (
    FunctionFailed,
    Invocation,
    Limits,
    ModuleRejected,
    RuntimeUnavailable,
    compiled_dir,
)
from agent.runtime.wasmedge.runtime import WasmEdgeRuntime, default_workers
from edgesync.protocol import FunctionRef

LIMITS = Limits(timeout_seconds=0.5, memory_bytes=4 * 1024 * 1024)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def runtime(data_dir: Path) -> Iterator[WasmEdgeRuntime]:
    instance = WasmEdgeRuntime(data_dir, _wasmedge_or_skip(), limits=LIMITS, workers=2)
    try:
        yield instance
    finally:
        instance.close()


async def _until(condition: Callable[[], object], seconds: float = 30.0) -> None:
    """Wait for a condition outside this process (a bound on waiting, not an assertion)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def _start_endless(runtime: WasmEdgeRuntime) -> tuple[asyncio.Future[Invocation], int]:
    """An endless call with a 30 s limit, and the pid of the worker running it."""
    long = Limits(timeout_seconds=30.0, memory_bytes=LIMITS.memory_bytes)
    call = asyncio.ensure_future(runtime.invoke("loop", b"", {}, long))
    await _until(lambda: runtime.worker_pids(busy_only=True))
    [pid] = runtime.worker_pids(busy_only=True)
    return call, pid


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not reaped yet, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def test_a_worker_killed_mid_call_fails_that_call_only(
    runtime: WasmEdgeRuntime, data_dir: Path
) -> None:
    deploy(runtime, data_dir, loop=LOOP, echo=ECHO)
    looping, victim = await _start_endless(runtime)
    # Another call runs beside it, on the other worker, before and after the kill.
    assert (await runtime.invoke("echo", b"beside", {}, LIMITS)).stdout == b"beside"
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(FunctionFailed) as caught:
        await looping
    error = caught.value
    assert (error.status, error.code) == (502, "FUNCTION_FAILED")
    assert "SIGKILL" in error.details["reason"]
    assert victim not in runtime.worker_pids()
    assert not _alive(victim)  # reaped, no zombie
    results = await asyncio.gather(
        *(runtime.invoke("echo", b"%d" % i, {}, LIMITS) for i in range(4))
    )
    assert [r.stdout for r in results] == [b"%d" % i for i in range(4)]
    assert len(runtime.worker_pids()) <= 2


async def test_a_worker_that_died_idle_costs_no_call(
    runtime: WasmEdgeRuntime, data_dir: Path
) -> None:
    deploy(runtime, data_dir, echo=ECHO)
    assert (await runtime.invoke("echo", b"first", {}, LIMITS)).stdout == b"first"
    [idle] = runtime.worker_pids()
    os.kill(idle, signal.SIGKILL)  # e.g. the OOM killer, between two calls
    await _until(lambda: not _alive(idle))
    assert (await runtime.invoke("echo", b"second", {}, LIMITS)).stdout == b"second"
    assert idle not in runtime.worker_pids()


async def test_endless_recursion_in_aot_code(runtime: WasmEdgeRuntime, data_dir: Path) -> None:
    table = deploy(runtime, data_dir, recurse=RECURSE_AFTER_OUTPUT, echo=ECHO)
    [compiled] = compiled_dir(data_dir).glob(f"wasmedge-{table['recurse'].sha256}.*.so")
    assert compiled.read_bytes()[:4] == b"\x7fELF"  # it runs AOT code
    with pytest.raises(FunctionFailed) as caught:
        await runtime.invoke("recurse", b"", {}, LIMITS)
    assert caught.value.code in ("FUNCTION_TRAP", "FUNCTION_TIMEOUT")
    for i in range(3):  # whatever stopped it, the pool serves the next calls
        assert (await runtime.invoke("echo", b"%d" % i, {}, LIMITS)).stdout == b"%d" % i
    assert all(_alive(pid) for pid in runtime.worker_pids())


async def test_a_looping_call_stops_at_its_limit_and_its_worker_lives_on(
    runtime: WasmEdgeRuntime, data_dir: Path
) -> None:
    deploy(runtime, data_dir, loop=LOOP, echo=ECHO)
    with pytest.raises(FunctionFailed) as caught:
        await runtime.invoke("loop", b"", {}, LIMITS)
    assert caught.value.details["reason"] == "time limit"  # stopped, not killed
    before = set(runtime.worker_pids())
    assert (await runtime.invoke("echo", b"next", {}, LIMITS)).stdout == b"next"
    assert set(runtime.worker_pids()) <= before | set(runtime.worker_pids())


async def test_64_concurrent_calls(runtime: WasmEdgeRuntime, data_dir: Path) -> None:
    deploy(runtime, data_dir, echo=ECHO, env=ENVIRON)
    bodies = [os.urandom(i * 997) for i in range(48)]
    results = await asyncio.gather(
        *(runtime.invoke("echo", body, {}, LIMITS) for body in bodies),
        *(runtime.invoke("env", b"", {"N": str(i)}, LIMITS) for i in range(16)),
    )
    assert [r.stdout for r in results[:48]] == bodies
    assert [r.stdout for r in results[48:]] == [f"N={i}\0".encode() for i in range(16)]
    assert 1 <= len(runtime.worker_pids()) <= 2


async def test_a_cancelled_call_takes_its_worker_down(
    runtime: WasmEdgeRuntime, data_dir: Path
) -> None:
    deploy(runtime, data_dir, loop=LOOP, echo=ECHO)
    task, victim = await _start_endless(runtime)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: not _alive(victim), 10.0)  # SIGKILLed, not left to its 30 s limit
    assert (await runtime.invoke("echo", b"after", {}, LIMITS)).stdout == b"after"


async def test_200_pages_declared_against_a_16_page_limit(data_dir: Path) -> None:
    sixteen_pages = Limits(timeout_seconds=1.0, memory_bytes=16 * 64 * 1024)
    runtime = WasmEdgeRuntime(data_dir, _wasmedge_or_skip(), limits=sixteen_pages, workers=1)
    try:
        sha, path = store_module(data_dir, wasm_of(BIG_MINIMUM))
        with pytest.raises(ModuleRejected) as caught:
            runtime.prepare(sha, path)
        assert (caught.value.code, caught.value.status) == ("MODULE_REJECTED", 422)
        assert caught.value.details == {"min_pages": 200, "limit_bytes": 16 * 64 * 1024}
        # Activated anyway (a tampered state): it never runs shrunk to the limit.
        runtime.activate({"big": FunctionRef("big", "1", sha)})
        with pytest.raises(ModuleRejected):
            await runtime.invoke("big", b"", {}, sixteen_pages)
    finally:
        runtime.close()


async def test_without_deploy_limits_a_large_declared_memory_is_refused_per_call(
    data_dir: Path,
) -> None:
    # No limits known at deploy (e.g. `edgesync invoke`): prepared, but never run shrunk.
    runtime = WasmEdgeRuntime(data_dir, _wasmedge_or_skip(), workers=1)
    try:
        table = deploy(runtime, data_dir, big=BIG_MINIMUM)
        assert table["big"].sha256
        with pytest.raises(FunctionFailed) as caught:
            await runtime.invoke("big", b"", {}, LIMITS)  # 64 pages
        assert caught.value.code == "FUNCTION_MEMORY_LIMIT"
        roomy = Limits(LIMITS.timeout_seconds, 200 * 64 * 1024)
        assert (await runtime.invoke("big", b"", {}, roomy)).stdout == b""
    finally:
        runtime.close()


GUEST_NOISE = """
import asyncio, hashlib, sys
from pathlib import Path
from agent.runtime.base import Limits, module_path
from agent.runtime.wasmedge.discovery import find_installation
from agent.runtime.wasmedge.runtime import WasmEdgeRuntime, default_workers
from edgesync.protocol import FunctionRef

data_dir, wasm = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
sha = hashlib.sha256(wasm).hexdigest()
path = module_path(data_dir, sha)
path.parent.mkdir(parents=True)
path.write_bytes(wasm)
runtime = WasmEdgeRuntime(data_dir, find_installation(), workers=1)
runtime.prepare(sha, path)
runtime.activate({"noisy": FunctionRef("noisy", "1", sha)})
async def main():
    for _ in range(3):
        try:
            await runtime.invoke("noisy", b"", {}, Limits(1.0))
        except Exception as exc:
            print("failed:", exc.code, file=sys.stderr)
asyncio.run(main())
runtime.close()
print("agent stdout")
"""


def test_guests_never_write_to_the_agents_stdio(tmp_path: Path) -> None:
    _wasmedge_or_skip()
    module = tmp_path / "trap.wasm"
    module.write_bytes(wasm_of(TRAP))  # writes to stdout and stderr, then traps
    done = subprocess.run(
        [sys.executable, "-c", GUEST_NOISE, str(tmp_path / "node"), str(module)],
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"agent stdout\n"
    assert done.stderr == b"failed: FUNCTION_TRAP\n" * 3  # no guest output, no WasmEdge log


def test_the_pool_size_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESYNC_WASMEDGE_WORKERS", "3")
    assert default_workers() == 3
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv("EDGESYNC_WASMEDGE_WORKERS", bad)
        with pytest.raises(RuntimeUnavailable):
            default_workers()
    monkeypatch.delenv("EDGESYNC_WASMEDGE_WORKERS")
    assert default_workers() == max(2, os.cpu_count() or 1)


async def test_prepare_many_compiles_in_parallel_and_leaves_a_working_pool(
    runtime: WasmEdgeRuntime, data_dir: Path
) -> None:
    # Tagged copies of the echo module: distinct hashes, one AOT compile each.
    modules = [
        store_module(
            data_dir, wasm_of(ECHO.replace("(memory", f'(data (i32.const 9000) "{i}") (memory', 1))
        )
        for i in range(4)
    ]
    runtime.prepare_many(modules)
    for sha, _ in modules:
        assert list(compiled_dir(data_dir).glob(f"wasmedge-{sha}.*.so"))
    # The compile workers outlive the threads that started them.
    sha, path = store_module(data_dir, wasm_of(ENVIRON))
    runtime.prepare(sha, path)
    runtime.activate(
        {f"f{i}": FunctionRef(f"f{i}", "1", sha) for i, (sha, _) in enumerate(modules)}
    )
    assert (await runtime.invoke("f3", b"tagged", {}, LIMITS)).stdout == b"tagged"


AGENT_WITH_ENDLESS_CALL = """
import asyncio, hashlib, sys
from pathlib import Path
from agent.runtime.base import Limits, module_path
from agent.runtime.wasmedge.discovery import find_installation
from agent.runtime.wasmedge.runtime import WasmEdgeRuntime
from edgesync.protocol import FunctionRef

data_dir, wasm = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
sha = hashlib.sha256(wasm).hexdigest()
path = module_path(data_dir, sha)
path.parent.mkdir(parents=True)
path.write_bytes(wasm)
runtime = WasmEdgeRuntime(data_dir, find_installation(), workers=1)
runtime.prepare(sha, path)
runtime.activate({"loop": FunctionRef("loop", "1", sha)})
async def main():
    call = asyncio.ensure_future(runtime.invoke("loop", b"", {}, Limits(600.0)))
    while not runtime.worker_pids(busy_only=True):
        await asyncio.sleep(0.01)
    print(*runtime.worker_pids(busy_only=True), runtime._compilers._idle[0].process.pid, flush=True)
    await call
asyncio.run(main())
"""


async def test_workers_end_with_a_killed_agent(tmp_path: Path) -> None:
    _wasmedge_or_skip()
    module = tmp_path / "loop.wasm"
    module.write_bytes(wasm_of(LOOP))
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AGENT_WITH_ENDLESS_CALL,
        str(tmp_path / "node"),
        str(module),
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert agent.stdout is not None
    line = await asyncio.wait_for(agent.stdout.readline(), 120)
    running, idle = (int(pid) for pid in line.split())
    agent.kill()  # kill -9: no cleanup runs
    await agent.wait()
    await _until(lambda: not _alive(running) and not _alive(idle))
