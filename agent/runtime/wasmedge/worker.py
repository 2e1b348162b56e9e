"""The WasmEdge worker process: runs functions through libwasmedge's C API (stdlib only).

Started by :mod:`agent.runtime.wasmedge.pool` as
``python -m agent.runtime.wasmedge.worker LIBWASMEDGE FD PARENT_PID`` (under
WasmEdge's own dynamic loader when the system glibc is older than the library
needs). ``FD`` is this end of a socketpair carrying :mod:`~.protocol` frames; the
first frame out is a hello with the library's version (or why it cannot load).

WASI in WasmEdge 0.14 reads and writes the *process's* fds 0, 1 and 2 (there is no
API to redirect them), so this process owns nothing else on them: they are memfds,
emptied before each call, and the protocol runs on ``FD``. The worker's own
diagnostics go to a copy of the stderr it inherited.

Per call: the module is loaded and validated once (cached by key), then a fresh
store, WASI module and instance run ``_start``. One watchdog thread enforces the time
limit by stopping the executor (``WasmEdge_AsyncCancel`` on a finished async call
of this executor: its cancel is ``Executor::stop()``), and cuts stdout past its
limit. Code that ignores the stop (AOT code in endless recursion, a guest asleep in
a host call) is killed by the parent.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import sys
import threading
import time
from typing import Any

from agent.runtime.fdio import pread_all
from agent.runtime.wasmedge import capi
from agent.runtime.wasmedge.protocol import STDERR_KEEP, read_frame, write_frame

#: How often the watchdog looks at the running call (its deadline, stdout's size).
POLL_SECONDS = 0.005
#: How long the watchdog keeps polling after the last call before it sleeps.
LINGER_SECONDS = 1.0
STDERR_LIMIT = 1024 * 1024
#: ``(module (func (export "noop")))``: run on each executor once to get its stop
#: handle, and again to consume a stop that arrived after its call had ended.
NOOP_WASM = bytes.fromhex("0061736d0100000001040160000003020100070801046e6f6f7000000a040102000b")
START, MEMORY = capi.wrap(b"_start"), capi.wrap(b"memory")


class Executor:
    """An executor for one memory-page limit, with the handle that stops it."""

    def __init__(self, lib: capi.WasmEdgeLibrary, pages: int) -> None:
        self.lib = lib
        self.conf = lib.ConfigureCreate()
        lib.ConfigureSetMaxMemoryPage(self.conf, pages)
        self.handle = lib.ExecutorCreate(self.conf, None)
        self.store = lib.StoreCreate()
        ast = load_module(lib, self.conf, NOOP_WASM, None)
        instance = ctypes.c_void_p()
        check(lib, lib.ExecutorInstantiate(self.handle, ctypes.byref(instance), self.store, ast))
        self.noop_instance = instance
        self.noop = lib.ModuleInstanceFindFunction(instance, capi.wrap(b"noop"))
        self.stopper = lib.ExecutorAsyncInvoke(self.handle, self.noop, None, 0)
        lib.AsyncWait(self.stopper)

    def stop(self) -> None:
        self.lib.AsyncCancel(self.stopper)

    def clear_stop(self) -> None:
        """Consume a stop that came too late for its call (it would hit the next one)."""
        self.lib.ExecutorInvoke(self.handle, self.noop, None, 0, None, 0)


def check(lib: capi.WasmEdgeLibrary, result: capi.WasmEdgeResult) -> None:
    if not capi.succeeded(result):
        raise RuntimeError(lib.message(result))


def load_module(
    lib: capi.WasmEdgeLibrary, conf: int, data: bytes | None, path: str | None
) -> ctypes.c_void_p:
    """Load (from bytes or a .wasm/.so file) and validate a module: its AST context."""
    loader = lib.LoaderCreate(conf)
    validator = lib.ValidatorCreate(conf)
    ast = ctypes.c_void_p()
    try:
        if data is not None:
            check(lib, lib.LoaderParseFromBuffer(loader, ctypes.byref(ast), data, len(data)))
        else:
            assert path is not None
            check(lib, lib.LoaderParseFromFile(loader, ctypes.byref(ast), path.encode()))
        result = lib.ValidatorValidate(validator, ast)
        if not capi.succeeded(result):
            lib.ASTModuleDelete(ast)
            raise RuntimeError(lib.message(result))
        return ast
    finally:
        lib.ValidatorDelete(validator)
        lib.LoaderDelete(loader)


class Watchdog(threading.Thread):
    """Stops the running call at its deadline; cuts stdout past its limit; ends the
    process when the agent is gone (idle, the worker sees its socket close instead).

    It polls every :data:`POLL_SECONDS` while calls come, and sleeps for good after
    :data:`LINGER_SECONDS` without one: back-to-back calls cost it no wake-up (a
    notify per call is a thread switch per call), an idle worker no CPU.
    """

    def __init__(self, parent: int) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.parent = parent
        self.cond = threading.Condition()
        self.executor: Executor | None = None
        self.deadline = 0.0
        self.max_out = 0
        self.timed_out = self.overflow = self.stopped = False
        self.asleep = True

    def begin(self, executor: Executor, seconds: float, max_out: int) -> None:
        with self.cond:
            self.executor, self.max_out = executor, max_out
            self.deadline = time.monotonic() + seconds
            self.timed_out = self.overflow = self.stopped = False
            if self.asleep:
                self.cond.notify()

    def end(self) -> None:
        """After this returns no stop can reach the finished call's executor."""
        with self.cond:
            self.executor = None

    def run(self) -> None:
        last_call = time.monotonic()
        with self.cond:
            while True:
                now = time.monotonic()
                if self.executor is None:
                    if now - last_call < LINGER_SECONDS:
                        self.cond.wait(POLL_SECONDS)
                        continue
                    self.asleep = True
                    while self.executor is None:
                        self.cond.wait()
                    self.asleep = False
                    continue
                last_call = now
                if os.getppid() != self.parent:  # the agent died: so does its guest
                    os._exit(1)
                if not self.stopped and now >= self.deadline:
                    self.timed_out = self.stopped = True
                    self.executor.stop()
                elif not self.stopped:
                    self._watch_output()
                self.cond.wait(min(POLL_SECONDS, max(0.0005, self.deadline - now)))

    def _watch_output(self) -> None:
        assert self.executor is not None
        if os.fstat(1).st_size > self.max_out:
            self.overflow = self.stopped = True
            os.ftruncate(1, 0)
            try:  # the guest's next write fails: a well-behaved one stops at once
                fcntl.fcntl(1, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
            except OSError:
                pass
            self.executor.stop()
        if os.fstat(2).st_size > STDERR_LIMIT:
            os.ftruncate(2, 0)


class Worker:
    def __init__(self, lib: capi.WasmEdgeLibrary, parent: int) -> None:
        self.lib = lib
        self.modules: dict[str, ctypes.c_void_p] = {}
        self.executors: dict[int, Executor] = {}
        self.load_conf = lib.ConfigureCreate()
        self.watchdog = Watchdog(parent)
        self.watchdog.start()
        for fd in (0, 1, 2):
            self._fresh_stdio(fd)

    @staticmethod
    def _fresh_stdio(fd: int) -> None:
        memfd = os.memfd_create(f"wasi-{fd}", os.MFD_ALLOW_SEALING)
        os.dup2(memfd, fd)
        os.close(memfd)

    def executor(self, pages: int) -> Executor:
        found = self.executors.get(pages)
        if found is None:
            found = self.executors[pages] = Executor(self.lib, pages)
        return found

    def module(self, key: str, path: str) -> ctypes.c_void_p:
        ast = self.modules.get(key)
        if ast is None:
            ast = self.modules[key] = load_module(self.lib, self.load_conf, None, path)
        return ast

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            ast = self.modules.pop(key, None)
            if ast is not None:
                self.lib.ASTModuleDelete(ast)

    def run(self, request: dict[str, Any], stdin: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            ast = self.module(request["key"], request["path"])
            executor = self.executor(request["pages"])
        except RuntimeError as exc:
            return {"status": "load", "message": str(exc), "stdout_len": 0}, b""
        self._reset_stdio(stdin)
        lib = self.lib
        argv = capi.c_strings([request["argv0"].encode()])
        env = [item.encode() for item in request["env"]]
        wasi = lib.ModuleInstanceCreateWASI(argv, 1, capi.c_strings(env), len(env), None, 0)
        store = lib.StoreCreate()
        instance = ctypes.c_void_p()
        reply: dict[str, Any] = {"status": "ok", "exit_code": 0}
        try:
            check(lib, lib.ExecutorRegisterImport(executor.handle, store, wasi))
            result = lib.ExecutorInstantiate(executor.handle, ctypes.byref(instance), store, ast)
            if not capi.succeeded(result):
                return self._collect({"status": "load", "message": lib.message(result)})
            start = lib.ModuleInstanceFindFunction(instance, START)
            self.watchdog.begin(executor, request["timeout"], request["max_out"])
            try:
                result = lib.ExecutorInvoke(executor.handle, start, None, 0, None, 0)
            finally:
                self.watchdog.end()
            interrupted = capi.code_of(result) == capi.INTERRUPTED
            if self.watchdog.stopped and not interrupted:
                executor.clear_stop()
            if self.watchdog.overflow or os.fstat(1).st_size > request["max_out"]:
                reply["status"] = "output"
            elif interrupted and self.watchdog.timed_out:
                reply["status"] = "timeout"
            elif not capi.succeeded(result):
                reply.update(status="trap", message=lib.message(result))
            elif capi.code_of(result) == capi.TERMINATED:
                reply["exit_code"] = lib.ModuleInstanceWASIGetExitCode(wasi)
                if reply["exit_code"]:
                    reply["status"] = "exit"
            if reply["status"] != "ok":  # for telling a memory limit from a trap
                memory = lib.ModuleInstanceFindMemory(instance, MEMORY)
                reply["memory_pages"] = lib.MemoryInstanceGetPageSize(memory) if memory else 0
            return self._collect(reply)
        finally:
            if instance:
                lib.ModuleInstanceDelete(instance)
            lib.StoreDelete(store)
            lib.ModuleInstanceDelete(wasi)

    def _reset_stdio(self, stdin: bytes) -> None:
        """stdin holds the request, stdout and stderr (emptied by ``_collect``) start at 0."""
        if self.watchdog.overflow:  # the last call's stdout is sealed: a new memfd
            self._fresh_stdio(1)
        os.pwrite(0, stdin, 0)
        os.ftruncate(0, len(stdin))
        for fd in (0, 1, 2):  # the last guest may have left them anywhere (fd_seek)
            os.lseek(fd, 0, os.SEEK_SET)

    @staticmethod
    def _collect(reply: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The reply with stdout (on success only) and the end of stderr, concatenated;
        both files are left empty for the next call."""
        size = os.fstat(1).st_size
        stdout = pread_all(1, size, 0) if reply["status"] == "ok" else b""
        if size:
            os.ftruncate(1, 0)
        size = os.fstat(2).st_size
        keep = min(size, STDERR_KEEP)
        stderr = pread_all(2, keep, size - keep).lstrip(b"\0") if size else b""
        if size:
            os.ftruncate(2, 0)
        reply["stdout_len"] = len(stdout)
        return reply, stdout + stderr

    def compile(self, request: dict[str, Any]) -> dict[str, Any]:
        lib = self.lib
        conf = lib.ConfigureCreate()
        lib.ConfigureCompilerSetInterruptible(conf, True)
        lib.ConfigureCompilerSetOutputFormat(conf, capi.OUTPUT_FORMAT_NATIVE)
        lib.ConfigureCompilerSetOptimizationLevel(conf, capi.OPTIMIZATION_O2)
        compiler = lib.CompilerCreate(conf)
        try:
            result = lib.CompilerCompile(compiler, request["src"].encode(), request["dst"].encode())
            if capi.succeeded(result):
                return {"status": "ok"}
            return {"status": "error", "message": lib.message(result)}
        finally:
            lib.CompilerDelete(compiler)
            lib.ConfigureDelete(conf)


def serve(channel: socket.socket, lib: capi.WasmEdgeLibrary, parent: int) -> None:
    worker = Worker(lib, parent)
    requests = channel.makefile("rb")
    while (frame := read_frame(requests)) is not None:
        request, blob = frame
        worker.forget(request.get("forget", []))
        if request["op"] == "run":
            write_frame(channel, *worker.run(request, blob))
        elif request["op"] == "compile":
            write_frame(channel, worker.compile(request), b"")
        else:
            write_frame(channel, {"status": "error", "message": f"unknown op {request['op']}"})


def main(argv: list[str]) -> int:
    library, fd, parent = argv[1], int(argv[2]), int(argv[3])
    if os.getppid() != parent:  # the agent is gone already
        return 0
    channel = socket.socket(fileno=fd)
    # Keep a way to report: fds 0-2 become the guests' stdio below.
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stdout = sys.stderr
    try:
        lib = capi.WasmEdgeLibrary(library)
        lib.LogOff()  # its log goes to fd 1, the guest's stdout
        version = lib.version()
    except (OSError, AttributeError) as exc:
        write_frame(channel, {"status": "error", "message": f"cannot load {library}: {exc}"})
        return 1
    write_frame(channel, {"status": "ready", "version": version, "pid": os.getpid()})
    serve(channel, lib, parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
