"""WebAssembly validation with wasmtime's real validator.

wasmtime-py copies the module into a ctypes buffer before validating, so a
large module would cost the server its size in memory twice. Modules up to
``IN_PROCESS_LIMIT`` are validated in a worker thread; larger ones in a child
process, so the server's RSS stays flat however big the upload (the upload
itself is streamed to disk). Run as a module, this file is that child.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from appliance.child_env import python_child_environment
from edgesync.errors import InvalidWasm

IN_PROCESS_LIMIT = 4 * 1024 * 1024
WASM_MAGIC = b"\x00asm"
_engine = None


def validate_bytes(module: bytes) -> None:
    """Raise :class:`InvalidWasm` unless ``module`` is a valid WebAssembly binary."""
    global _engine
    if not module.startswith(WASM_MAGIC):
        raise InvalidWasm("module is not a WebAssembly binary (bad magic number)")
    import wasmtime

    if _engine is None:
        _engine = wasmtime.Engine()
    try:
        wasmtime.Module.validate(_engine, module)
    except wasmtime.WasmtimeError as exc:
        raise InvalidWasm(
            "module is not valid WebAssembly", details={"reason": _first_line(str(exc))}
        ) from exc


async def validate_file(path: Path, size: int) -> None:
    if size <= IN_PROCESS_LIMIT:
        module = await asyncio.to_thread(path.read_bytes)
        await asyncio.to_thread(validate_bytes, module)
        return
    with path.open("rb") as handle:
        if handle.read(4) != WASM_MAGIC:
            raise InvalidWasm("module is not a WebAssembly binary (bad magic number)")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance.wasm_check",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=python_child_environment(),
    )
    out, err = await child.communicate()
    if child.returncode == 0:
        return
    if child.returncode == 2:
        raise InvalidWasm(
            "module is not valid WebAssembly",
            details={"reason": out.decode(errors="replace").strip()},
        )
    raise RuntimeError(f"wasm validator failed: {_first_line(err.decode(errors='replace'))}")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown"


def _main(argv: list[str]) -> int:
    try:
        validate_bytes(Path(argv[0]).read_bytes())
    except InvalidWasm as exc:
        print(exc.details.get("reason", exc.message))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
