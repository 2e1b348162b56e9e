"""One suite, both runtimes: wasmtime in process and WasmEdge through its C API.

The WASM modules are WAT sources below (compiled with ``wasmtime.wat2wasm``), so
the suite needs nothing but the venv and, for the WasmEdge half, a WasmEdge found
by :func:`agent.runtime.wasmedge.discovery.find_installation` (``$EDGESYNC_WASMEDGE``,
e.g. the wrapper ``build/wasmedge.sh`` provisions in ``.wasmedge/bin/wasmedge``, or
PATH). Under CI (``CI=true``) a missing WasmEdge fails the suite instead of skipping it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from agent.runtime import open_runtime
from agent.runtime.base import (
    FunctionFailed,
    FunctionNotDeployed,
    Limits,
    ModuleRejected,
    Runtime,
    RuntimeUnavailable,
    collect_compiled,
    compiled_dir,
    module_path,
)
from agent.runtime.module_info import check_deployable
from agent.runtime.wasmedge.discovery import Installation, find_installation
from agent.runtime.wasmedge.runtime import WasmEdgeRuntime
from agent.runtime.wasmtime_runtime import WasmtimeRuntime
from edgesync.protocol import FunctionRef

LIMITS = Limits(timeout_seconds=0.5, memory_bytes=4 * 1024 * 1024)  # 64 pages

# -- modules -----------------------------------------------------------------------

WASI = '(import "wasi_snapshot_preview1" "{0}" (func ${0} {1}))'
FD_READ = WASI.format("fd_read", "(param i32 i32 i32 i32) (result i32)")
FD_WRITE = WASI.format("fd_write", "(param i32 i32 i32 i32) (result i32)")
PROC_EXIT = WASI.format("proc_exit", "(param i32)")
# print(fd, ptr, len): one fd_write of one iovec at 0..8, result at 8.
PRINT = """
  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
"""

ECHO = f"""(module {FD_READ} {FD_WRITE} {PROC_EXIT}
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32) (local $off i32) (local $done i32)
    (block $eof (loop $read
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 65536))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (local.set $n (i32.load (i32.const 8)))
      (br_if $eof (i32.eqz (local.get $n)))
      (local.set $off (i32.const 1024))
      (loop $write
        (i32.store (i32.const 0) (local.get $off))
        (i32.store (i32.const 4) (local.get $n))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $done (i32.load (i32.const 8)))
        (if (i32.eqz (local.get $done)) (then (call $proc_exit (i32.const 1))))
        (local.set $off (i32.add (local.get $off) (local.get $done)))
        (local.set $n (i32.sub (local.get $n) (local.get $done)))
        (br_if $write (local.get $n)))
      (br $read)))))"""

# Writes its environment block ("K=V\\0K2=V2\\0") to stdout.
ENVIRON = f"""(module {FD_WRITE}
  {WASI.format("environ_sizes_get", "(param i32 i32) (result i32)")}
  {WASI.format("environ_get", "(param i32 i32) (result i32)")}
  (memory (export "memory") 1)
  {PRINT}
  (func (export "_start")
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 64) (i32.const 4096)))
    (call $print (i32.const 1) (i32.const 4096) (i32.load (i32.const 20)))))"""

# Writes its argument block ("argv0\\0...") to stdout.
ARGS = f"""(module {FD_WRITE}
  {WASI.format("args_sizes_get", "(param i32 i32) (result i32)")}
  {WASI.format("args_get", "(param i32 i32) (result i32)")}
  (memory (export "memory") 1)
  {PRINT}
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 64) (i32.const 4096)))
    (call $print (i32.const 1) (i32.const 4096) (i32.load (i32.const 20)))))"""

TRAP = f"""(module {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "partial output\\n")
  (data (i32.const 128) "about to trap\\n")
  {PRINT}
  (func (export "_start")
    (call $print (i32.const 1) (i32.const 64) (i32.const 15))
    (call $print (i32.const 2) (i32.const 128) (i32.const 14))
    unreachable))"""

LOOP = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'

# Writes 4 x 64 KiB (more than a pipe holds) to stdout, then fails in {{how}}.
NOISY_THEN = f"""(module {FD_WRITE}
  (memory (export "memory") 2)
  {PRINT}
  (func $recurse (call $recurse))
  (func (export "_start")
    (call $print (i32.const 1) (i32.const 1024) (i32.const 65536))
    (call $print (i32.const 1) (i32.const 1024) (i32.const 65536))
    (call $print (i32.const 1) (i32.const 1024) (i32.const 65536))
    (call $print (i32.const 1) (i32.const 1024) (i32.const 65536))
    {{how}}))"""
LOOP_AFTER_OUTPUT = NOISY_THEN.format(how="(loop $l (br $l))")
RECURSE_AFTER_OUTPUT = NOISY_THEN.format(how="(call $recurse)")

EXIT = f"""(module {FD_WRITE} {PROC_EXIT}
  (memory (export "memory") 1)
  (data (i32.const 64) "ok\\n")
  (data (i32.const 128) "exiting with {{code}}\\n")
  {PRINT}
  (func (export "_start")
    (call $print (i32.const 1) (i32.const 64) (i32.const 3))
    (call $print (i32.const 2) (i32.const 128) (i32.const 15))
    (call $proc_exit (i32.const {{code}}))))"""

# Grows one page at a time, as an allocator does, until refused; then aborts.
GROW_STEPS = """(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))"""

# One large allocation (~62 MiB), refused: says so on stderr, as malloc users do.
GROW_HUGE = f"""(module {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "out of memory\\n")
  {PRINT}
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 1000)) (i32.const -1))
      (then (call $print (i32.const 2) (i32.const 64) (i32.const 14)) unreachable))))"""

# A refused grow the function copes with: not a failure.
GROW_COPE = f"""(module {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "fallback\\n")
  (data (i32.const 128) "grew\\n")
  {PRINT}
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 1000)) (i32.const -1))
      (then (call $print (i32.const 1) (i32.const 64) (i32.const 9)))
      (else (call $print (i32.const 1) (i32.const 128) (i32.const 5))))))"""

GROW_SMALL = f"""(module {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "grew\\n")
  {PRINT}
  (func (export "_start")
    (if (i32.ne (memory.grow (i32.const 16)) (i32.const -1))
      (then (call $print (i32.const 1) (i32.const 64) (i32.const 5))))))"""

BIG_MINIMUM = '(module (memory (export "memory") 200) (func (export "_start")))'

# Writes 64 KiB blocks until a write fails, then exits 1.
SPAM = f"""(module {FD_WRITE} {PROC_EXIT}
  (memory (export "memory") 2)
  (func (export "_start")
    (loop $more
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 65536))
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (br $more))))"""

NO_START = '(module (memory (export "memory") 1) (func (export "main")))'


def wasm_of(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


# -- fixtures ----------------------------------------------------------------------

RUNTIME_KINDS = ["wasmtime", "wasmedge"]


def _wasmedge_or_skip() -> Installation:
    try:
        installation = find_installation()
    except RuntimeUnavailable as exc:
        pytest.fail(f"the WasmEdge found does not work: {exc}")
    if installation is None:
        reason = (
            "no WasmEdge: set EDGESYNC_WASMEDGE to a wasmedge executable "
            "(build/wasmedge.sh provisions .wasmedge/bin/wasmedge) or put wasmedge on PATH"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test both runtimes: {reason}")
        pytest.skip(reason)
    return installation


def make_runtime(kind: str, data_dir: Path) -> Runtime:
    if kind == "wasmedge":
        return WasmEdgeRuntime(data_dir, _wasmedge_or_skip(), limits=LIMITS)
    return WasmtimeRuntime(data_dir, limits=LIMITS)


@pytest.fixture(params=RUNTIME_KINDS)
def runtime_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "wasmedge":
        _wasmedge_or_skip()
    return str(request.param)


@pytest.fixture
def runtime_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def runtime(runtime_kind: str, runtime_data_dir: Path) -> Iterator[Runtime]:
    instance = make_runtime(runtime_kind, runtime_data_dir)
    try:
        yield instance
    finally:
        instance.close()


def store_module(data_dir: Path, wasm: bytes) -> tuple[str, Path]:
    """Put ``wasm`` where the agent keeps verified modules; return (sha256, path)."""
    sha = hashlib.sha256(wasm).hexdigest()
    path = module_path(data_dir, sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wasm)
    return sha, path


def deploy(runtime: Runtime, data_dir: Path, **functions: str) -> dict[str, FunctionRef]:
    """Prepare each WAT source and activate them (added to the current table)."""
    table = runtime.functions()
    for name, wat in functions.items():
        sha, path = store_module(data_dir, wasm_of(wat))
        runtime.prepare(sha, path)
        table[name] = FunctionRef(name, "1.0.0", sha)
    runtime.activate(table)
    return table


async def failure(
    runtime: Runtime, name: str, stdin: bytes = b"", *, code: str | tuple[str, ...], **limits: float
) -> FunctionFailed:
    """Invoke ``name``, which must fail with ``code`` (or one of several)."""
    with pytest.raises(FunctionFailed) as caught:
        await runtime.invoke(name, stdin, {}, Limits(**{**LIMITS.__dict__, **limits}))
    error = caught.value
    codes = (code,) if isinstance(code, str) else code
    assert error.code in codes and error.status == 502, error.envelope()
    assert error.details["function"] == name
    assert error.details["runtime"] == runtime.name
    return error


# -- behaviour ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"hello, edge", b"", os.urandom(1024 * 1024)])
async def test_echo(runtime: Runtime, runtime_data_dir: Path, body: bytes) -> None:
    deploy(runtime, runtime_data_dir, echo=ECHO)
    result = await runtime.invoke("echo", body, {}, LIMITS)
    assert result.stdout == body
    assert result.exit_code == 0


async def test_environment_is_passed(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, env=ENVIRON)
    env = {"REQUEST_METHOD": "POST", "HTTP_X_TRACE": "two words = ok", "EMPTY": ""}
    result = await runtime.invoke("env", b"", env, LIMITS)
    block = result.stdout.split(b"\0")
    assert block[-1] == b""
    assert set(block[:-1]) == {f"{k}={v}".encode() for k, v in env.items()}


async def test_environment_rejects_unpassable_names(
    runtime: Runtime, runtime_data_dir: Path
) -> None:
    deploy(runtime, runtime_data_dir, env=ENVIRON)
    for bad in ({"A=B": "x"}, {"": "x"}, {"-X": "x"}, {"A": "nul\0byte"}):
        with pytest.raises(ValueError):
            await runtime.invoke("env", b"", bad, LIMITS)


async def test_argv0_names_the_function(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, hello=ARGS)
    result = await runtime.invoke("hello", b"", {}, LIMITS)
    # wasmtime passes the name; the WasmEdge CLI appends ".wasm" to the file's name.
    assert result.stdout in (b"hello\0", b"hello.wasm\0")


async def test_trap(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, trap=TRAP)
    error = await failure(runtime, "trap", code="FUNCTION_TRAP")
    assert "unreachable" in error.message
    assert "about to trap" in error.details["stderr"]
    assert "partial output" not in error.details["stderr"]


async def test_endless_loop_times_out(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, loop=LOOP)
    error = await failure(runtime, "loop", code="FUNCTION_TIMEOUT")
    assert error.details["reason"] != "backstop"  # the runtime's own limit stopped it


async def test_timeout_after_output(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, loop=LOOP_AFTER_OUTPUT)
    await failure(runtime, "loop", code="FUNCTION_TIMEOUT")


async def test_endless_recursion_is_stopped(runtime: Runtime, runtime_data_dir: Path) -> None:
    # wasmtime traps (stack overflow); WasmEdge's AOT code hangs: the backstop kills it.
    deploy(runtime, runtime_data_dir, recurse=RECURSE_AFTER_OUTPUT)
    await failure(runtime, "recurse", code=("FUNCTION_TRAP", "FUNCTION_TIMEOUT"))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


async def test_cancelled_invocation_is_stopped(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, loop=LOOP, echo=ECHO)
    task = asyncio.ensure_future(runtime.invoke("loop", b"", {}, Limits(1.0, LIMITS.memory_bytes)))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if Path("/proc/self/cmdline").exists():  # no orphan wasmedge (SIGKILL takes a moment)
        for _ in range(100):
            if not _processes_mentioning(str(runtime_data_dir)):
                break
            await asyncio.sleep(0.02)
        assert _processes_mentioning(str(runtime_data_dir)) == []
    assert (await runtime.invoke("echo", b"still here", {}, LIMITS)).stdout == b"still here"


async def test_exit_status(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, exit3=EXIT.format(code=3), exit0=EXIT.format(code=0))
    error = await failure(runtime, "exit3", code="FUNCTION_EXIT")
    assert error.details["exit_code"] == 3
    assert "exiting with 3" in error.details["stderr"]
    result = await runtime.invoke("exit0", b"", {}, LIMITS)  # proc_exit(0) is success
    assert (result.stdout, result.exit_code) == (b"ok\n", 0)
    assert result.stderr == b"exiting with 0\n"


@pytest.mark.parametrize("wat", [GROW_STEPS, GROW_HUGE], ids=["steps", "huge"])
async def test_memory_limit(runtime: Runtime, runtime_data_dir: Path, wat: str) -> None:
    deploy(runtime, runtime_data_dir, hog=wat)
    error = await failure(runtime, "hog", code="FUNCTION_MEMORY_LIMIT")
    assert error.details["limit_bytes"] == LIMITS.memory_bytes


async def test_module_declaring_more_memory_is_rejected_at_deploy(
    runtime: Runtime, runtime_data_dir: Path
) -> None:
    sha, path = store_module(runtime_data_dir, wasm_of(BIG_MINIMUM))
    with pytest.raises(ModuleRejected) as caught:
        runtime.prepare(sha, path)
    assert caught.value.code == "MODULE_REJECTED"
    assert caught.value.details["min_pages"] == 200
    assert not list(compiled_dir(runtime_data_dir).glob(f"*{sha}*"))


async def test_memory_within_limit_and_refusal_coped_with(
    runtime: Runtime, runtime_data_dir: Path
) -> None:
    deploy(runtime, runtime_data_dir, small=GROW_SMALL, cope=GROW_COPE)
    assert (await runtime.invoke("small", b"", {}, LIMITS)).stdout == b"grew\n"
    assert (await runtime.invoke("cope", b"", {}, LIMITS)).stdout == b"fallback\n"
    roomy = Limits(LIMITS.timeout_seconds, 128 * 1024 * 1024)
    assert (await runtime.invoke("cope", b"", {}, roomy)).stdout == b"grew\n"


async def test_output_limit(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, echo=ECHO, spam=SPAM)
    await failure(runtime, "echo", b"x" * 4096, max_output_bytes=1024, code="FUNCTION_OUTPUT_LIMIT")
    await failure(
        runtime,
        "spam",
        max_output_bytes=1024 * 1024,
        timeout_seconds=5.0,
        code="FUNCTION_OUTPUT_LIMIT",
    )
    assert (await runtime.invoke("echo", b"x" * 1024, {}, LIMITS)).stdout == b"x" * 1024


async def test_unknown_function(runtime: Runtime) -> None:
    with pytest.raises(FunctionNotDeployed) as caught:
        await runtime.invoke("nope", b"", {}, LIMITS)
    assert caught.value.status == 404


async def test_activate_swaps_the_whole_table(runtime: Runtime, runtime_data_dir: Path) -> None:
    old = deploy(runtime, runtime_data_dir, first=ECHO)
    assert runtime.functions() == old
    sha, path = store_module(runtime_data_dir, wasm_of(EXIT.format(code=0)))
    runtime.prepare(sha, path)
    new = {"second": FunctionRef("second", "2.0.0", sha)}
    runtime.activate(new)
    assert runtime.functions() == new
    with pytest.raises(FunctionNotDeployed):
        await runtime.invoke("first", b"x", {}, LIMITS)
    assert (await runtime.invoke("second", b"", {}, LIMITS)).stdout == b"ok\n"
    new["third"] = new["second"]  # the runtime keeps its own copy
    assert "third" not in runtime.functions()


@pytest.mark.parametrize(
    "wasm",
    [b"definitely not wasm", b"\0asm\x01\0\0\0" + b"\x7f" * 32, wasm_of(NO_START)],
    ids=["garbage", "broken", "no-start"],
)
async def test_prepare_rejects(runtime: Runtime, runtime_data_dir: Path, wasm: bytes) -> None:
    sha, path = store_module(runtime_data_dir, wasm)
    with pytest.raises(ModuleRejected) as caught:
        runtime.prepare(sha, path)
    assert caught.value.status == 422
    assert not list(compiled_dir(runtime_data_dir).glob(f"*{sha}*"))


async def test_prepare_rejects_a_hash_mismatch(runtime: Runtime, runtime_data_dir: Path) -> None:
    _, path = store_module(runtime_data_dir, wasm_of(ECHO))
    with pytest.raises(ModuleRejected):
        runtime.prepare("0" * 64, path)


async def test_concurrent_invocations(runtime: Runtime, runtime_data_dir: Path) -> None:
    deploy(runtime, runtime_data_dir, echo=ECHO, env=ENVIRON)
    bodies = [f"request {i} ".encode() * (i * 100 + 1) for i in range(20)]
    results = await asyncio.gather(
        *(runtime.invoke("echo", body, {}, LIMITS) for body in bodies),
        *(runtime.invoke("env", b"", {"N": str(i)}, LIMITS) for i in range(5)),
    )
    assert [r.stdout for r in results[:20]] == bodies
    assert [r.stdout for r in results[20:]] == [f"N={i}\0".encode() for i in range(5)]


async def test_a_failure_does_not_affect_the_next_call(
    runtime: Runtime, runtime_data_dir: Path
) -> None:
    deploy(runtime, runtime_data_dir, echo=ECHO, trap=TRAP, loop=LOOP, hog=GROW_STEPS)
    for bad, code in (("trap", "FUNCTION_TRAP"), ("hog", "FUNCTION_MEMORY_LIMIT")):
        await failure(runtime, bad, code=code)
        result = await runtime.invoke("echo", b"after", {}, LIMITS)
        assert (result.stdout, result.stderr) == (b"after", b"")
    # A timeout in flight does not hold the others up.
    looping = asyncio.ensure_future(failure(runtime, "loop", code="FUNCTION_TIMEOUT"))
    for i in range(5):
        assert (await runtime.invoke("echo", b"%d" % i, {}, LIMITS)).stdout == b"%d" % i
    await looping


async def test_prepare_is_cached(
    runtime: Runtime, runtime_kind: str, runtime_data_dir: Path
) -> None:
    sha, path = store_module(runtime_data_dir, wasm_of(ECHO))
    runtime.prepare(sha, path)
    [compiled] = compiled_dir(runtime_data_dir).glob(f"{runtime.name}-{sha}.*")
    stamp = compiled.stat().st_mtime_ns
    runtime.prepare(sha, path)
    assert compiled.stat().st_mtime_ns == stamp
    # A fresh instance (an agent restart) uses the compiled file: the source can be gone.
    path.unlink()
    fresh = make_runtime(runtime_kind, runtime_data_dir)
    try:
        fresh.prepare(sha, path)
        fresh.activate({"echo": FunctionRef("echo", "1", sha)})
        assert (await fresh.invoke("echo", b"again", {}, LIMITS)).stdout == b"again"
        assert compiled.stat().st_mtime_ns == stamp
        fresh.forget(sha)
        # Files are collected from state, for every runtime alike: no state keeps it.
        assert collect_compiled(runtime_data_dir, {sha}) == []
        assert compiled.exists()
        assert collect_compiled(runtime_data_dir, set()) == [compiled]
        assert not compiled.exists()
    finally:
        fresh.close()


async def test_invoke_prepares_a_module_activated_without_prepare(
    runtime: Runtime, runtime_data_dir: Path
) -> None:
    sha, _ = store_module(runtime_data_dir, wasm_of(ECHO))
    runtime.activate({"echo": FunctionRef("echo", "1", sha)})
    assert (await runtime.invoke("echo", b"lazy", {}, LIMITS)).stdout == b"lazy"


# -- choosing a runtime ------------------------------------------------------------


def test_open_runtime_wasmtime(tmp_path: Path) -> None:
    runtime = open_runtime("wasmtime", tmp_path)
    try:
        assert runtime.name == "wasmtime"
    finally:
        runtime.close()


def test_open_runtime_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_runtime("wasmer", tmp_path)


def test_find_wasmedge_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESYNC_WASMEDGE", str(tmp_path / "missing"))
    with pytest.raises(RuntimeUnavailable):
        find_installation()
    fake = tmp_path / "wasmedge"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EDGESYNC_WASMEDGE", str(fake))
    with pytest.raises(RuntimeUnavailable):
        find_installation()
    # It is found but does not run: auto falls back, wasmedge insists.
    runtime = open_runtime("auto", tmp_path)
    try:
        assert runtime.name == "wasmtime"
    finally:
        runtime.close()
    with pytest.raises(RuntimeUnavailable):
        open_runtime("wasmedge", tmp_path)


def test_open_runtime_auto_prefers_wasmedge(tmp_path: Path) -> None:
    _wasmedge_or_skip()
    runtime = open_runtime("auto", tmp_path)
    try:
        assert runtime.name == "wasmedge"
    finally:
        runtime.close()


def test_check_deployable() -> None:
    check_deployable(wasm_of(ECHO), LIMITS.memory_bytes)
    for bad in (b"", b"\0asm\x0d\0\x01\0", wasm_of(NO_START), wasm_of(ECHO)[:-3]):
        with pytest.raises(ModuleRejected):
            check_deployable(bad, LIMITS.memory_bytes)
