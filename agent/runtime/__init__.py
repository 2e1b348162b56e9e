"""WASM runtimes behind one interface (:mod:`agent.runtime.base`).

``open_runtime("auto", data_dir)`` picks WasmEdge when a working ``wasmedge`` is
installed and the bundled wasmtime otherwise; ``"wasmedge"`` and ``"wasmtime"``
insist. The implementations are imported lazily: wasmtime loads a 20 MB native
library, and an agent on WasmEdge never needs it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from agent.runtime.base import Runtime, RuntimeUnavailable

log = logging.getLogger("edgesync.runtime")

KINDS = ("auto", "wasmedge", "wasmtime")
#: Names a ``wasmedge`` executable (or a wrapper script) to use instead of PATH's.
WASMEDGE_ENV = "EDGESYNC_WASMEDGE"


def find_wasmedge() -> list[str] | None:
    """The command prefix that runs WasmEdge, or None.

    ``$EDGESYNC_WASMEDGE`` when set (it must name an executable file), otherwise
    ``wasmedge`` on ``PATH``. Whether it actually runs is checked by
    :func:`open_runtime`.
    """
    configured = os.environ.get(WASMEDGE_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return [str(path.resolve())]
        log.warning("%s=%s is not an executable file", WASMEDGE_ENV, configured)
        return None
    found = shutil.which("wasmedge")
    return [found] if found else None


def open_runtime(kind: str, data_dir: Path) -> Runtime:
    """The runtime ``kind`` (auto | wasmedge | wasmtime) keeping its files in ``data_dir``.

    Raises :class:`RuntimeUnavailable` when ``wasmedge`` is asked for and none
    works; ``auto`` then falls back to wasmtime.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown runtime {kind!r}: expected one of {', '.join(KINDS)}")
    if kind in ("auto", "wasmedge"):
        from agent.runtime.wasmedge_runtime import WasmEdgeRuntime, wasmedge_version

        command = find_wasmedge()
        version = wasmedge_version(command) if command else None
        if command and version:
            log.info("runtime: %s (%s)", version, command[0])
            return WasmEdgeRuntime(data_dir, command, version=version)
        why = "no wasmedge found" if not command else f"{command[0]} does not run"
        if kind == "wasmedge":
            raise RuntimeUnavailable(
                f"WasmEdge is not available ({why}); install it or set {WASMEDGE_ENV}"
            )
        log.info("runtime: wasmtime (%s)", why)
    from agent.runtime.wasmtime_runtime import WasmtimeRuntime

    return WasmtimeRuntime(data_dir)
