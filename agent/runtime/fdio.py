"""Reading captured stdio back from (mem)fds: stdlib only, shared with the WasmEdge worker."""

from __future__ import annotations

import os


def pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    """``size`` bytes of ``fd`` from ``offset`` (fewer at its end), whatever its position."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
