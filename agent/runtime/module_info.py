"""What a module declares, read from its binary before any runtime sees it.

Both runtimes refuse, at deploy, a module that is not a WASI command (no exported
``_start`` function), that imports anything but WASI preview 1's functions (WasmEdge
would link its own socket extensions), or whose memories *declare* a minimum above
the agent's memory limit (WasmEdge 0.14 silently shrinks such a memory to the limit
and runs the module anyway). Only the section framing and the import, memory and
export sections are read; the runtimes' own validators check the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agent.runtime.base import ModuleRejected

WASM_PAGE = 64 * 1024
_IMPORT, _MEMORY, _EXPORT = 2, 5, 7
_FUNC_KIND, _TABLE_KIND, _MEMORY_KIND, _GLOBAL_KIND, _TAG_KIND = 0, 1, 2, 3, 4


#: WASI preview 1, the whole of it: what a function may import. WasmEdge also offers
#: its own socket functions (``sock_open``, ``sock_connect``, ...) under this module
#: name, which would let a function open network connections: never linked here.
WASI_MODULE = "wasi_snapshot_preview1"
WASI_PREVIEW1 = frozenset(
    """args_get args_sizes_get environ_get environ_sizes_get clock_res_get clock_time_get
    fd_advise fd_allocate fd_close fd_datasync fd_fdstat_get fd_fdstat_set_flags
    fd_fdstat_set_rights fd_filestat_get fd_filestat_set_size fd_filestat_set_times
    fd_pread fd_prestat_get fd_prestat_dir_name fd_pwrite fd_read fd_readdir fd_renumber
    fd_seek fd_sync fd_tell fd_write path_create_directory path_filestat_get
    path_filestat_set_times path_link path_open path_readlink path_remove_directory
    path_rename path_symlink path_unlink_file poll_oneoff proc_exit proc_raise sched_yield
    random_get sock_accept sock_recv sock_send sock_shutdown""".split()
)


@dataclass(frozen=True)
class ModuleInfo:
    has_start: bool
    #: The largest minimum any memory (defined or imported) declares, in 64 KiB pages.
    min_pages: int
    #: ``(module, name, kind)`` of every import.
    imports: tuple[tuple[str, str, int], ...] = ()


class _Reader:
    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ModuleRejected("malformed WebAssembly module (section truncated)")
        self.pos += 1
        return self.data[self.pos - 1]

    def uleb(self) -> int:
        result = shift = 0
        while True:
            if shift > 63:
                raise ModuleRejected("malformed WebAssembly module (LEB128 too long)")
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def name(self) -> bytes:
        length = self.uleb()
        if self.pos + length > self.end:
            raise ModuleRejected("malformed WebAssembly module (name past its section)")
        self.pos += length
        return self.data[self.pos - length : self.pos]

    def limits_min(self) -> int:
        flags = self.byte()
        minimum = self.uleb()
        if flags & 1:
            self.uleb()  # maximum
        return minimum


def _imports(reader: _Reader, mins: list[int]) -> list[tuple[str, str, int]]:
    """``(module, name, kind)`` of each import; imported memories' minimums go to ``mins``."""
    found = []
    for _ in range(reader.uleb()):
        module = reader.name().decode("utf-8", "replace")
        name = reader.name().decode("utf-8", "replace")
        kind = reader.byte()
        found.append((module, name, kind))
        if kind == _FUNC_KIND:
            reader.uleb()
        elif kind == _TABLE_KIND:
            reader.byte()  # reference type
            reader.limits_min()
        elif kind == _MEMORY_KIND:
            mins.append(reader.limits_min())
        elif kind == _GLOBAL_KIND:
            reader.byte()
            reader.byte()
        elif kind == _TAG_KIND:
            reader.byte()
            reader.uleb()
        else:
            raise ModuleRejected("malformed WebAssembly module (import kind)")
    return found


def inspect_module(wasm: bytes) -> ModuleInfo:
    """Read what ``wasm`` declares; raise :class:`ModuleRejected` when it is no core module."""
    if wasm[:4] != b"\0asm":
        raise ModuleRejected("not a WebAssembly module (no \\0asm header)")
    if wasm[4:8] != b"\x01\0\0\0":
        raise ModuleRejected("not a WebAssembly core module, version 1 (a component?)")
    pos, has_start, mins, imports = 8, False, [0], []
    while pos < len(wasm):
        header = _Reader(wasm, pos, len(wasm))
        section = header.byte()
        size = header.uleb()
        end = header.pos + size
        if end > len(wasm):
            raise ModuleRejected("malformed WebAssembly module (section past the end)")
        body = _Reader(wasm, header.pos, end)
        if section == _IMPORT:
            imports += _imports(body, mins)
        elif section == _MEMORY:
            mins += [body.limits_min() for _ in range(body.uleb())]
        elif section == _EXPORT:
            for _ in range(body.uleb()):
                name, kind = body.name(), body.byte()
                body.uleb()
                has_start = has_start or (name == b"_start" and kind == _FUNC_KIND)
        pos = end
    return ModuleInfo(has_start=has_start, min_pages=max(mins), imports=tuple(imports))


def check_deployable(wasm: bytes, memory_limit_bytes: int | None) -> ModuleInfo:
    """:func:`inspect_module`, refusing what no invocation under the limit could run
    (no memory check without a limit: the runtime then refuses such a call instead)."""
    info = inspect_module(wasm)
    if not info.has_start:
        raise ModuleRejected("module exports no _start function: not a WASI command")
    foreign = [
        f"{module}.{name}"
        for module, name, kind in info.imports
        if module != WASI_MODULE or name not in WASI_PREVIEW1 or kind != _FUNC_KIND
    ]
    if foreign:
        raise ModuleRejected(
            "module imports what WASI preview 1 does not provide",
            details={"imports": foreign[:20]},
        )
    if memory_limit_bytes is not None and info.min_pages * WASM_PAGE > memory_limit_bytes:
        raise ModuleRejected(
            f"module declares {info.min_pages} pages of memory, more than the limit of "
            f"{memory_limit_bytes // WASM_PAGE} pages ({memory_limit_bytes} bytes)",
            code="MODULE_REJECTED",
            details={"min_pages": info.min_pages, "limit_bytes": memory_limit_bytes},
        )
    return info


def read_deployable(
    sha256: str, source: Path, memory_limit_bytes: int | None
) -> tuple[bytes, ModuleInfo]:
    """The verified module file's bytes and what it declares, checked for deployment."""
    try:
        wasm = source.read_bytes()
    except OSError as exc:
        raise ModuleRejected(f"module {sha256[:12]} cannot be read: {exc.strerror}") from exc
    if hashlib.sha256(wasm).hexdigest() != sha256:
        raise ModuleRejected(f"module file {source.name} does not match its SHA-256")
    return wasm, check_deployable(wasm, memory_limit_bytes)
