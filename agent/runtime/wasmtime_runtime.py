"""wasmtime, in process: the runtime the zipapp always has.

One ``Engine`` with epoch interruption; a ticker thread advances the epoch every
``tick_seconds`` (5 ms) while invocations run and sleeps while none do, so a
Store's epoch deadline is its wall-time limit. Each invocation gets a fresh
``Store`` (memory limit, deadline, WASI config) and an instance of the module's
cached ``InstancePre``, on a small pool of daemon threads: wasmtime releases the
GIL while wasm runs, so the event loop never blocks.

Stdio is where a WASI invoke spends its time (each file stream ≈ 100–200 µs): stdin
is handed over as bytes (the C API's ``wasi_config_set_stdin_bytes``); stdout and
stderr go to a
pair of memfds per worker slot, reused (wasmtime opens ``/proc/self/fd/N``, which
truncates it; we ``pread`` the result). ``stdout_custom`` is never used: it
panics at interpreter exit. The ticker also watches in-flight output: stdout past
its limit is cut and sealed (FUNCTION_OUTPUT_LIMIT), so no function fills RAM.

Memory: ``Store.set_limits(memory_size=...)`` makes ``memory.grow`` return -1
past the limit and instantiation fail when a memory's minimum exceeds it. The C
API has no limiter callback, so a refused grow is not observable; a failed run
(trap or non-zero exit) is FUNCTION_MEMORY_LIMIT when instantiation was refused,
when an exported memory is within one page of the limit (allocators that grow
step by step end there), or when stderr says it ran out of memory (wasi-libc
programs, Rust's "memory allocation of N bytes failed", Go's "out of memory").

Compiled modules are cached by hash in memory and, serialized, in
``<data_dir>/compiled/wasmtime-<sha256>.cwasm`` (written atomically through
``compile_output``; only those files are ever deserialized), so a restart skips
Cranelift. The agent collects them from state (``collect_compiled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.metadata
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as wasmtime_ffi
from wasmtime._func import enter_wasm

from agent.runtime.base import (
    OUT_OF_MEMORY,
    Invocation,
    Limits,
    ModuleRejected,
    RuntimeUnavailable,
    compile_output,
    compiled_dir,
    env_pairs,
    function_failed,
    module_path,
)
from agent.runtime.fdio import pread_all
from agent.runtime.module_info import read_deployable
from agent.runtime.table import FunctionTable, prepare_in_parallel

log = logging.getLogger("edgesync.runtime.wasmtime")

WASM_PAGE = 64 * 1024
#: A call first runs on the event loop's own thread (no hand-off to a worker thread
#: and back) with this budget in epoch ticks (5-10 ms); one that needs longer is
#: stopped and run again from scratch on a worker thread. Running again is safe: a
#: function's only effects are its stdout and stderr (no preopened files, no
#: sockets), and both are thrown away with the stopped attempt.
INLINE_BUDGET_TICKS = 2
#: Host calls that can block (a sleep): modules importing them never run inline.
BLOCKING_IMPORTS = frozenset({"poll_oneoff"})
#: A guest blocked in a host call (poll_oneoff sleeping) is past the epoch's reach:
#: the caller gets FUNCTION_TIMEOUT this long after the limit, the thread stays busy.
BACKSTOP_GRACE_SECONDS = 1.0
#: stderr beyond this is cut by the watchdog; only its end is kept for errors.
STDERR_LIMIT = 1024 * 1024
STDERR_KEEP = 64 * 1024
_VERSION = importlib.metadata.version("wasmtime")
_set_stdin_bytes = getattr(wasmtime_ffi, "wasi_config_set_stdin_bytes", None)


@dataclass(frozen=True)
class _Loaded:
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    #: ``_start``'s position among the exports, found once per module.
    start: int
    #: Whether it can block in a host call (``poll_oneoff`` sleeps), where no epoch
    #: deadline reaches it: such a module never runs on the event loop's thread.
    may_block: bool

    @classmethod
    def of(cls, module: wasmtime.Module, pre: wasmtime.InstancePre) -> _Loaded:
        names = [export.name for export in module.exports]
        may_block = any(item.name in BLOCKING_IMPORTS for item in module.imports)
        return cls(module, pre, names.index("_start"), may_block)


class _Overran(Exception):
    """An inline attempt hit its budget: run the call again on a worker thread."""


def _call_start(store: wasmtime.Store, instance: wasmtime.Instance, index: int) -> None:
    """Call the export at ``index`` (``_start``: no parameters, no results).

    Straight through the C API: ``instance.exports(store)`` builds every export's
    wrapper and ``Func.__call__`` asks for the type on each call, about 20 µs
    together per invocation. Errors come back as wasmtime-py's own (``ExitTrap``
    for ``proc_exit``, ``Trap``), exactly as ``Func.__call__`` raises them.
    """
    item = wasmtime_ffi.wasmtime_extern_t()
    name = ctypes.POINTER(ctypes.c_char)()
    length = ctypes.c_size_t()
    context = store._context()
    found = wasmtime_ffi.wasmtime_instance_export_nth(
        context,
        ctypes.byref(instance._instance),
        index,
        ctypes.byref(name),
        ctypes.byref(length),
        ctypes.byref(item),
    )
    if not found or item.kind != wasmtime_ffi.WASMTIME_EXTERN_FUNC.value:
        raise wasmtime.WasmtimeError("the module's _start export is not a function")
    with enter_wasm(store) as trap:
        error = wasmtime_ffi.wasmtime_func_call(
            context, ctypes.byref(item.of.func), None, 0, None, 0, trap
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)


def _scratch_file(name: str) -> tuple[int, str, bool]:
    """An fd, a path wasmtime can open for it, and whether the path must be unlinked."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        return fd, f"/proc/self/fd/{fd}", False
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix=f"{name}-", dir=directory)
    return fd, path, True


class _Spool:
    """stdin (fallback only), stdout and stderr files for one invocation at a time."""

    def __init__(self) -> None:
        self._files = [_scratch_file(f"edgesync-{n}") for n in ("stdin", "stdout", "stderr")]
        self.in_fd, self.in_path = self._files[0][:2]
        self.out_fd, self.out_path = self._files[1][:2]
        self.err_fd, self.err_path = self._files[2][:2]
        self.out_limit = 0
        self.out_overflow = False
        self.err_overflow = False
        self.spent = False  # sealed: not reusable

    def reset(self, out_limit: int) -> None:
        self.out_limit = out_limit
        self.out_overflow = self.err_overflow = False

    def watch(self) -> None:
        """Ticker thread: cut files past their limit (the holes cost no memory).

        An overflowing stdout is also sealed, so the guest's next write fails and
        a well-behaved guest stops at once instead of at its time limit.
        """
        if not self.out_overflow and os.fstat(self.out_fd).st_size > self.out_limit:
            os.ftruncate(self.out_fd, 0)
            self.out_overflow = True
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(self.out_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
                self.spent = True
        if os.fstat(self.err_fd).st_size > STDERR_LIMIT:
            os.ftruncate(self.err_fd, 0)
            self.err_overflow = True

    def take(self, want_stdout: bool) -> tuple[bytes | None, bytes]:
        """stdout (None when over the limit) and the end of stderr; empties both."""
        stdout: bytes | None = None
        size = os.fstat(self.out_fd).st_size
        self.out_overflow = self.out_overflow or size > self.out_limit
        if want_stdout and not self.out_overflow:
            stdout = pread_all(self.out_fd, size)
        err_size = os.fstat(self.err_fd).st_size
        keep = min(err_size, STDERR_KEEP)
        stderr = pread_all(self.err_fd, keep, err_size - keep)
        if self.err_overflow:
            stderr = stderr.lstrip(b"\0")
        if size:
            os.ftruncate(self.out_fd, 0)
        if err_size:
            os.ftruncate(self.err_fd, 0)
        return stdout, stderr

    def close(self) -> None:
        for fd, path, unlink in self._files:
            os.close(fd)
            if unlink:
                with contextlib.suppress(OSError):
                    os.unlink(path)


class _SpoolPool:
    def __init__(self) -> None:
        self._free: list[_Spool] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> _Spool:
        with self._lock:
            if self._free:
                return self._free.pop()
        return _Spool()

    def release(self, spool: _Spool) -> None:
        with self._lock:
            if not self._closed and not spool.spent:
                self._free.append(spool)
                return
        spool.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for spool in free:
            spool.close()


class _EpochTicker:
    """Advances the engine's epoch every ``period`` while any invocation runs."""

    def __init__(self, engine: wasmtime.Engine, period: float) -> None:
        self._engine = engine
        self._period = period
        self._active: set[_Spool] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="wasmtime-epoch", daemon=True)
        self._thread.start()

    def enter(self, spool: _Spool) -> None:
        with self._cond:
            self._active.add(spool)
            self._cond.notify()

    def leave(self, spool: _Spool) -> None:
        with self._cond:
            self._active.discard(spool)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._active and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
            time.sleep(self._period)
            self._engine.increment_epoch()
            with self._cond:
                for spool in self._active:
                    spool.watch()


class _Job:
    __slots__ = ("args", "cancelled", "fn", "future", "loop", "started", "timer")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.started: float | None = None
        self.cancelled = False
        self.timer: asyncio.TimerHandle | None = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Workers:
    """Daemon threads for blocking calls, started as load needs them.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, and a
    guest sleeping in a host call would keep the agent from exiting.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Job:
        job = _Job(fn, args)
        with self._lock:
            self._busy += 1
            if self._busy > len(self._threads) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"wasmtime-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)
        return job

    def close(self) -> None:
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            result: Any = None
            error: BaseException | None = None
            if not job.cancelled:
                job.started = time.monotonic()
                try:
                    result = job.fn(*job.args)
                except BaseException as exc:
                    error = exc
            with self._lock:
                self._busy -= 1
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this result any more


class WasmtimeRuntime(FunctionTable):
    """The :class:`~agent.runtime.base.Runtime` on wasmtime, in this process."""

    name = "wasmtime"
    version = _VERSION

    def __init__(
        self,
        data_dir: Path,
        *,
        limits: Limits | None = None,
        workers: int | None = None,
        tick_seconds: float = 0.005,
    ) -> None:
        super().__init__()
        self._data_dir = data_dir
        # The node's limit for deploy-time checks; None: not known, calls are checked.
        self._memory_limit = limits.memory_bytes if limits is not None else None
        self._compiled = compiled_dir(data_dir)
        self._tick = tick_seconds
        config = wasmtime.Config()
        config.epoch_interruption = True
        self._engine = wasmtime.Engine(config)
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._modules: dict[str, _Loaded] = {}
        self._compile_lock = threading.Lock()
        self._spools = _SpoolPool()
        self._ticker = _EpochTicker(self._engine, tick_seconds)
        size = workers or max(4, min(32, 4 * (os.cpu_count() or 1)))
        self._workers = _Workers(size)
        self._max_deadline = 0  # the largest epoch deadline (in ticks) handed out
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    def prepare(self, sha256: str, module_path: Path) -> None:
        if sha256 in self._modules:
            return
        with self._compile_lock:
            if sha256 not in self._modules:
                self._modules[sha256] = self._load(sha256, module_path)

    def prepare_many(self, modules: Iterable[tuple[str, Path]]) -> None:
        """:meth:`prepare` each; Cranelift releases the GIL, so compiles overlap."""
        prepare_in_parallel(self.prepare, modules, os.cpu_count() or 1)

    def forget(self, sha256: str) -> None:
        # Its .cwasm is collected with every other file no state names (collect_compiled).
        with self._compile_lock:
            self._modules.pop(sha256, None)

    def close(self) -> None:
        """Stop the ticker and the workers; guests still running are interrupted."""
        if self._closed:
            return
        self._closed = True
        self._ticker.stop()
        # Without the ticker a looping guest would never reach its deadline: move
        # the epoch past every deadline handed out (each is at most that far ahead).
        for _ in range(self._max_deadline + 1):
            self._engine.increment_epoch()
        self._workers.close()
        self._spools.close()

    # -- compiling ---------------------------------------------------------------

    def _cwasm(self, sha256: str) -> Path:
        return self._compiled / f"wasmtime-{sha256}.cwasm"

    def _load(self, sha256: str, source: Path) -> _Loaded:
        cached = self._cwasm(sha256)
        if cached.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, str(cached))
                return _Loaded.of(module, self._linker.instantiate_pre(module))
            except wasmtime.WasmtimeError as exc:
                # Another wasmtime version or engine configuration: compile again.
                log.info("recompiling %s: %s", sha256[:12], exc)
        wasm, _ = read_deployable(sha256, source, self._memory_limit)
        try:
            module = wasmtime.Module(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise ModuleRejected(
                "not a valid WebAssembly module", details={"error": str(exc)[:2000]}
            ) from exc
        starts = [e for e in module.exports if e.name == "_start"]
        if not starts or not isinstance(starts[0].type, wasmtime.FuncType):
            raise ModuleRejected("module exports no _start function: not a WASI command")
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise ModuleRejected(
                "module imports what WASI preview 1 does not provide",
                details={"error": str(exc)[:2000]},
            ) from exc
        self._store_compiled(cached, module)
        return _Loaded.of(module, pre)

    def _store_compiled(self, path: Path, module: wasmtime.Module) -> None:
        """Write the serialized module atomically; a failure only costs a recompile."""
        try:
            with compile_output(path) as partial:
                partial.write_bytes(module.serialize())
        except (OSError, wasmtime.WasmtimeError) as exc:
            log.warning("cannot cache compiled module %s: %s", path.name, exc)

    def _loaded(self, sha256: str) -> _Loaded:
        """A module the table names but no prepare() loaded yet (e.g. after a restart)."""
        self.prepare(sha256, module_path(self._data_dir, sha256))
        return self._modules[sha256]

    # -- invoking ----------------------------------------------------------------

    async def invoke(
        self, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits
    ) -> Invocation:
        if self._closed:
            raise RuntimeUnavailable("the wasmtime runtime is closed")
        ref = self.deployed(name)
        pairs = env_pairs(env)
        loaded = self._modules.get(ref.sha256)
        if loaded is None:
            loaded = await asyncio.to_thread(self._loaded, ref.sha256)
        if not loaded.may_block:
            try:
                return self._run(loaded, name, stdin, pairs, limits, INLINE_BUDGET_TICKS)
            except _Overran:
                pass
        job = self._workers.submit(self._run, loaded, name, bytes(stdin), pairs, limits)
        backstop = limits.timeout_seconds + BACKSTOP_GRACE_SECONDS
        loop = asyncio.get_running_loop()
        # A timer, not asyncio.wait(): no waiter task per call. Time queued is free.
        timer = loop.call_later(backstop, self._backstop, job, backstop, name, limits)
        try:
            result: Invocation = await job.future
            return result
        except asyncio.CancelledError:
            job.cancelled = True  # still queued: never start it
            raise
        finally:
            timer.cancel()
            if job.timer is not None:
                job.timer.cancel()

    def _backstop(self, job: _Job, backstop: float, name: str, limits: Limits) -> None:
        """The call ran ``backstop`` seconds (a guest asleep in a host call): give up on it."""
        left = backstop if job.started is None else job.started + backstop - time.monotonic()
        if left > 0:
            job.timer = job.loop.call_later(left, self._backstop, job, backstop, name, limits)
        elif not job.future.done():
            job.future.set_exception(self._timeout(name, limits, b"", reason="backstop"))

    def _run(
        self,
        loaded: _Loaded,
        name: str,
        stdin: bytes,
        env: list[tuple[str, str]],
        limits: Limits,
        budget_ticks: int | None = None,
    ) -> Invocation:
        """One instantiation and ``_start``, classified (worker thread, or inline with
        ``budget_ticks``: :class:`_Overran` when the budget runs out first)."""
        spool = self._spools.acquire()
        store = wasmtime.Store(self._engine)
        try:
            store.set_limits(memory_size=limits.memory_bytes)
            deadline = math.ceil(limits.timeout_seconds / self._tick) + 1
            if budget_ticks is not None and budget_ticks < deadline:
                deadline = budget_ticks
            else:
                budget_ticks = None
            self._max_deadline = max(self._max_deadline, deadline)
            store.set_epoch_deadline(deadline)
            store.set_wasi(self._wasi(name, stdin, env, spool))
            spool.reset(limits.max_output_bytes)
            instance: wasmtime.Instance | None = None
            exit_code = 0
            error: Exception | None = None
            self._ticker.enter(spool)
            try:
                instance = loaded.pre.instantiate(store)
                _call_start(store, instance, loaded.start)
            except wasmtime.ExitTrap as exc:
                exit_code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                error = exc
            finally:
                self._ticker.leave(spool)
            ok = error is None and exit_code == 0
            stdout, stderr = spool.take(want_stdout=ok)
            if spool.out_overflow:  # whatever came after (a failed write, the deadline)
                raise self._fail(
                    "FUNCTION_OUTPUT_LIMIT",
                    f"wrote more than {limits.max_output_bytes} bytes to stdout",
                    name,
                    stderr,
                    limit_bytes=limits.max_output_bytes,
                )
            if ok:
                assert stdout is not None
                return Invocation(stdout, stderr, 0)
            if budget_ticks is not None and _interrupted(error):
                raise _Overran
            raise self._failure(name, limits, store, instance, exit_code, error, stderr)
        finally:
            store.close()
            self._spools.release(spool)

    def _wasi(
        self, name: str, stdin: bytes, env: list[tuple[str, str]], spool: _Spool
    ) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name]
        if env:
            wasi.env = env
        if _set_stdin_bytes is not None:
            vec = wasmtime_ffi.wasm_byte_vec_t()
            data = ctypes.cast(ctypes.c_char_p(stdin), ctypes.POINTER(wasmtime_ffi.wasm_byte_t))
            wasmtime_ffi.wasm_byte_vec_new(ctypes.byref(vec), len(stdin), data)
            _set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # takes the vector's contents
        else:  # older wasmtime-py: a file
            os.ftruncate(spool.in_fd, 0)
            os.pwrite(spool.in_fd, stdin, 0)
            wasi.stdin_file = spool.in_path
        wasi.stdout_file = spool.out_path
        wasi.stderr_file = spool.err_path
        return wasi

    # -- classifying -------------------------------------------------------------

    def _failure(
        self,
        name: str,
        limits: Limits,
        store: wasmtime.Store,
        instance: wasmtime.Instance | None,
        exit_code: int,
        error: Exception | None,
        stderr: bytes,
    ) -> Exception:
        if _interrupted(error):
            return self._timeout(name, limits, stderr, reason="epoch deadline")
        text = "" if error is None else str(error)
        exited = {} if error is not None else {"exit_code": exit_code}
        refused = instance is None and "exceeds memory limits" in text  # its minimum
        if refused or _memory_exhausted(store, instance, limits) or OUT_OF_MEMORY.search(stderr):
            return self._fail(
                "FUNCTION_MEMORY_LIMIT",
                f"exceeded its memory limit of {limits.memory_bytes} bytes",
                name,
                stderr,
                limit_bytes=limits.memory_bytes,
                reason=_last_line(text),
                **exited,
            )
        if error is None:
            return self._fail(
                "FUNCTION_EXIT", f"exited with status {exit_code}", name, stderr, **exited
            )
        reason = _last_line(text)
        return self._fail(
            "FUNCTION_TRAP", f"trapped: {reason}", name, stderr, reason=reason, trace=text[:2000]
        )

    def _timeout(self, name: str, limits: Limits, stderr: bytes, *, reason: str) -> Exception:
        return self._fail(
            "FUNCTION_TIMEOUT",
            f"exceeded its time limit of {limits.timeout_seconds:g} s",
            name,
            stderr,
            limit_seconds=limits.timeout_seconds,
            reason=reason,
        )

    def _fail(self, code: str, what: str, name: str, stderr: bytes, **details: object) -> Exception:
        return function_failed(
            code,
            f"function {name!r} {what}",
            function=name,
            runtime=self.name,
            stderr=stderr,
            **details,
        )


def _interrupted(error: Exception | None) -> bool:
    return isinstance(error, wasmtime.Trap) and error.trap_code == wasmtime.TrapCode.INTERRUPT


def _memory_exhausted(
    store: wasmtime.Store, instance: wasmtime.Instance | None, limits: Limits
) -> bool:
    """Is an exported memory within one page of the limit (no room left to grow)?"""
    if instance is None:
        return False
    try:
        memories = [e for e in instance.exports(store).by_index if isinstance(e, wasmtime.Memory)]
        return any(m.data_len(store) + WASM_PAGE > limits.memory_bytes for m in memories)
    except wasmtime.WasmtimeError:
        return False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
