"""WASM runtimes behind one interface (:mod:`agent.runtime.base`).

``open_runtime("auto", data_dir)`` picks WasmEdge when one is installed and runs,
and the bundled wasmtime otherwise, and logs which and why; ``"wasmedge"`` and
``"wasmtime"`` insist (no silent fallback: :class:`RuntimeUnavailable`). The
implementations are imported lazily: wasmtime loads a 20 MB native library, and an
agent on WasmEdge never needs it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from agent.runtime.base import Limits, Runtime, RuntimeUnavailable

if TYPE_CHECKING:
    from agent.runtime.wasmedge.discovery import Installation

log = logging.getLogger("edgesync.runtime")

KINDS = ("auto", "wasmedge", "wasmtime")
#: Names a ``wasmedge`` executable or a WasmEdge root folder to use first.
WASMEDGE_ENV = "EDGESYNC_WASMEDGE"


def find_wasmedge() -> Installation | None:
    """The WasmEdge installation the search order finds, or None (none, or not working)."""
    from agent.runtime.wasmedge.discovery import find_installation

    try:
        return find_installation()
    except RuntimeUnavailable as exc:
        log.warning("%s", exc.message)
        return None


def open_runtime(kind: str, data_dir: Path, limits: Limits | None = None) -> Runtime:
    """The runtime ``kind`` (auto | wasmedge | wasmtime) keeping its files in ``data_dir``.

    ``limits`` are the node's function limits: a module declaring more memory than
    ``limits.memory_bytes`` is refused at deploy (without them, such a module is
    refused per call, FUNCTION_MEMORY_LIMIT, never run shrunk). Raises :class:`RuntimeUnavailable`
    when ``wasmedge`` is asked for and none works.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown runtime {kind!r}: expected one of {', '.join(KINDS)}")
    if kind in ("auto", "wasmedge"):
        from agent.runtime.wasmedge.discovery import find_installation
        from agent.runtime.wasmedge.runtime import open_wasmedge

        try:
            installation = find_installation()
            if installation is None:
                raise RuntimeUnavailable(
                    f"no WasmEdge found (${WASMEDGE_ENV}, build/wasmedge.sh's .wasmedge/, "
                    "wasmedge on PATH, /usr/lib/*/libwasmedge.so.0)"
                )
            runtime = open_wasmedge(data_dir, installation, limits)
        except RuntimeUnavailable as exc:
            if kind == "wasmedge":
                raise RuntimeUnavailable(
                    f"WasmEdge is not available: {exc.message}; install it or set {WASMEDGE_ENV}"
                ) from exc
            log.info("runtime: wasmtime, because %s", exc.message)
        else:
            how = "chosen" if kind == "wasmedge" else "auto: WasmEdge found and working"
            log.info(
                "runtime: wasmedge %s (%s; %s, library %s)",
                runtime.version,
                how,
                installation.source,
                installation.library,
            )
            return runtime
    from agent.runtime.wasmtime_runtime import WasmtimeRuntime

    if kind == "wasmtime":
        log.info("runtime: wasmtime (chosen)")
    return WasmtimeRuntime(data_dir, limits=limits)
