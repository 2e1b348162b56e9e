"""AOT-compiled modules on disk: ``compiled/wasmedge-<sha256>.<version>.so``.

The file name carries the module's hash and the WasmEdge version that wrote it (AOT
code is tied to that version), so an upgrade simply compiles again. Compilation
runs in a worker (through the C API's compiler, interruptible, so the time limit
stops AOT code) into a temp file from :func:`~agent.runtime.base.compile_output`,
fsynced and renamed: a crash leaves the old file or none, never half of one. Files
are collected from state like every runtime's (``collect_compiled``).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from agent.runtime.base import ModuleRejected, compile_output
from agent.runtime.wasmedge.pool import CompilePool, WorkerDied

#: A module whose compilation takes longer is refused (its worker is killed).
COMPILE_TIMEOUT_SECONDS = 600.0
_SAFE_VERSION = re.compile(r"[^0-9A-Za-z.+_-]")


class AotCache:
    def __init__(self, directory: Path, version: str, compilers: CompilePool) -> None:
        self.directory = directory
        self.version = _SAFE_VERSION.sub("_", version) or "unknown"
        self._compilers = compilers

    def path(self, sha256: str) -> Path:
        return self.directory / f"wasmedge-{sha256}.{self.version}.so"

    def ensure(self, sha256: str, source: Path) -> Path:
        """The compiled file for ``source`` (compiled now unless cached)."""
        target = self.path(sha256)
        if target.exists():
            return target
        with compile_output(target) as partial:
            request = {"op": "compile", "src": str(source), "dst": str(partial)}
            try:
                reply = self._compilers.call(request, COMPILE_TIMEOUT_SECONDS)
            except TimeoutError as exc:
                raise ModuleRejected(
                    f"AOT compilation of {sha256[:12]} took over {COMPILE_TIMEOUT_SECONDS:g} s"
                ) from exc
            except WorkerDied as exc:  # the compiler crashed on it: it would again
                raise ModuleRejected(
                    f"WasmEdge's compiler crashed on module {sha256[:12]}",
                    details={"error": exc.reason},
                ) from exc
            if reply.get("status") != "ok" or partial.stat().st_size == 0:
                raise ModuleRejected(
                    f"WasmEdge cannot compile module {sha256[:12]}",
                    details={"error": str(reply.get("message", ""))[:2000]},
                )
        return target

    def drop_other_versions(self) -> None:
        """Files another WasmEdge version wrote: never loadable by this one."""
        suffix = f".{self.version}.so"
        for stale in self.directory.glob("wasmedge-*.so"):
            if not stale.name.endswith(suffix):
                with contextlib.suppress(OSError):
                    stale.unlink()
