"""WasmEdge through its C API, in long-lived worker processes the agent owns.

``prepare`` checks the module (a WASI command whose declared memory fits the limit)
and AOT-compiles it once per WasmEdge version (:mod:`.aot`); ``invoke`` sends the
call to an idle worker (:mod:`.pool`), which runs it with a fresh store and WASI
instance, stdin from the request and stdout/stderr captured in memfds, and answers
with a status this module maps to the runtimes' shared error codes:

* ``trap`` -> FUNCTION_TRAP (FUNCTION_MEMORY_LIMIT when the memory had no room left
  or stderr says it ran out), ``exit`` -> FUNCTION_EXIT (likewise),
  ``timeout`` -> FUNCTION_TIMEOUT, ``output`` -> FUNCTION_OUTPUT_LIMIT;
* a worker killed at the backstop (code the stop cannot reach) -> FUNCTION_TIMEOUT,
  one that died -> FUNCTION_FAILED; either way it is replaced, other calls go on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.runtime.base import (
    OUT_OF_MEMORY,
    FunctionFailed,
    Invocation,
    Limits,
    RuntimeUnavailable,
    compiled_dir,
    env_pairs,
    function_failed,
    module_path,
)
from agent.runtime.module_info import WASM_PAGE, read_deployable
from agent.runtime.table import FunctionTable, prepare_in_parallel
from agent.runtime.wasmedge.aot import AotCache
from agent.runtime.wasmedge.discovery import Installation
from agent.runtime.wasmedge.pool import CompilePool, WorkerDied, WorkerPool

#: Beyond the time limit, how long a call may take before its worker is killed.
BACKSTOP_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class _Prepared:
    path: str  # the AOT-compiled file
    min_pages: int  # 0 when unknown (compiled file reused without its source)


#: Overrides the number of worker processes (default: one per core, at least two).
WORKERS_ENV = "EDGESYNC_WASMEDGE_WORKERS"


def default_workers() -> int:
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise RuntimeUnavailable(f"{WORKERS_ENV}={configured!r} is not a positive number")
        return int(configured)
    return max(2, os.cpu_count() or 1)


class WasmEdgeRuntime(FunctionTable):
    """The :class:`~agent.runtime.base.Runtime` on ``libwasmedge``, in worker processes."""

    name = "wasmedge"

    def __init__(
        self,
        data_dir: Path,
        installation: Installation,
        *,
        limits: Limits | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        self._data_dir = data_dir
        # The node's limit for deploy-time checks; None: not known, calls are checked.
        self._memory_limit = limits.memory_bytes if limits is not None else None
        self.installation = installation
        size = workers or default_workers()
        self._compilers = CompilePool(installation, size)
        self.version = self._compilers.start_one()  # proves the library loads and runs
        self._aot = AotCache(compiled_dir(data_dir), self.version, self._compilers)
        self._pool = WorkerPool(installation, size)
        self._parallel = size
        self._prepared: dict[str, _Prepared] = {}
        self._lock = threading.Lock()
        self._aot.drop_other_versions()

    # -- lifecycle ---------------------------------------------------------------

    def prepare(self, sha256: str, module_path: Path) -> None:
        if sha256 in self._prepared:
            return
        compiled = self._aot.path(sha256)
        min_pages = 0
        if not compiled.exists() or module_path.exists():
            _, info = read_deployable(sha256, module_path, self._memory_limit)
            min_pages = info.min_pages
            compiled = self._aot.ensure(sha256, module_path)
        with self._lock:
            self._prepared[sha256] = _Prepared(str(compiled), min_pages)

    def prepare_many(self, modules: Iterable[tuple[str, Path]]) -> None:
        """:meth:`prepare` each, compiling up to one per worker at a time."""
        prepare_in_parallel(self.prepare, modules, self._parallel)

    def forget(self, sha256: str) -> None:
        with self._lock:
            self._prepared.pop(sha256, None)
        self._pool.forget(sha256)  # its file goes with every other one no state names

    def close(self) -> None:
        self._pool.close()
        self._compilers.close()

    def worker_pids(self, *, busy_only: bool = False) -> list[int]:
        """The running workers' process ids (for tests and diagnostics)."""
        return self._pool.pids(busy_only=busy_only)

    # -- invoking ----------------------------------------------------------------

    async def invoke(
        self, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits
    ) -> Invocation:
        ref = self.deployed(name)
        pairs = env_pairs(env)
        prepared = self._prepared.get(ref.sha256)
        if prepared is None:
            path = module_path(self._data_dir, ref.sha256)
            await asyncio.to_thread(self.prepare, ref.sha256, path)
            prepared = self._prepared[ref.sha256]
        pages = max(1, limits.memory_bytes // WASM_PAGE)
        if prepared.min_pages > pages:
            raise self._fail(
                "FUNCTION_MEMORY_LIMIT",
                f"needs {prepared.min_pages} pages, over its memory limit",
                name,
                b"",
                limits,
            )
        request = {
            "op": "run",
            "key": ref.sha256,
            "path": prepared.path,
            "argv0": name,
            "env": [f"{key}={value}" for key, value in pairs],
            "timeout": limits.timeout_seconds,
            "pages": pages,
            "max_out": limits.max_output_bytes,
        }
        backstop = limits.timeout_seconds + BACKSTOP_GRACE_SECONDS
        try:
            reply, data = await self._pool.call(request, bytes(stdin), backstop)
        except WorkerDied as exc:
            if exc.backstop:
                raise self._timeout(name, limits, b"", reason="backstop") from exc
            raise self._fail(
                "FUNCTION_FAILED", f"failed: {exc.reason}", name, b"", limits, reason=exc.reason
            ) from exc
        stdout_len = int(reply.get("stdout_len", 0))
        stdout, stderr = data[:stdout_len], data[stdout_len:]
        return self._result(name, limits, reply, stdout, stderr)

    def _result(
        self, name: str, limits: Limits, reply: dict[str, object], stdout: bytes, stderr: bytes
    ) -> Invocation:
        status = reply.get("status")
        if status == "ok":
            return Invocation(stdout, stderr, 0)
        if status == "output":
            raise self._fail(
                "FUNCTION_OUTPUT_LIMIT",
                f"wrote more than {limits.max_output_bytes} bytes to stdout",
                name,
                stderr,
                limits,
                limit_bytes=limits.max_output_bytes,
            )
        if status == "timeout":
            raise self._timeout(name, limits, stderr, reason="time limit")
        message = str(reply.get("message", "unknown error"))
        pages = int(str(reply.get("memory_pages", 0)))
        exhausted = pages and (pages + 1) * WASM_PAGE > limits.memory_bytes
        if status in ("trap", "exit") and (exhausted or OUT_OF_MEMORY.search(stderr)):
            exited = {"exit_code": reply["exit_code"]} if status == "exit" else {}
            raise self._fail(
                "FUNCTION_MEMORY_LIMIT",
                f"exceeded its memory limit of {limits.memory_bytes} bytes",
                name,
                stderr,
                limits,
                limit_bytes=limits.memory_bytes,
                reason=message if status == "trap" else "memory exhausted",
                **exited,
            )
        if status == "exit":
            code = reply.get("exit_code")
            raise self._fail(
                "FUNCTION_EXIT", f"exited with status {code}", name, stderr, limits, exit_code=code
            )
        raise self._fail(
            "FUNCTION_TRAP", f"trapped: {message}", name, stderr, limits, reason=message
        )

    def _timeout(self, name: str, limits: Limits, stderr: bytes, *, reason: str) -> FunctionFailed:
        return self._fail(
            "FUNCTION_TIMEOUT",
            f"exceeded its time limit of {limits.timeout_seconds:g} s",
            name,
            stderr,
            limits,
            limit_seconds=limits.timeout_seconds,
            reason=reason,
        )

    def _fail(
        self, code: str, what: str, name: str, stderr: bytes, limits: Limits, **details: object
    ) -> FunctionFailed:
        if code == "FUNCTION_MEMORY_LIMIT":
            details.setdefault("limit_bytes", limits.memory_bytes)
        return function_failed(
            code,
            f"function {name!r} {what}",
            function=name,
            runtime=self.name,
            stderr=stderr,
            **details,
        )


def open_wasmedge(
    data_dir: Path, installation: Installation, limits: Limits | None = None
) -> WasmEdgeRuntime:
    """Start the runtime; :class:`RuntimeUnavailable` when the library does not run."""
    try:
        return WasmEdgeRuntime(data_dir, installation, limits=limits)
    except RuntimeUnavailable:
        raise
    except OSError as exc:
        raise RuntimeUnavailable(f"cannot start WasmEdge workers: {exc}") from exc
