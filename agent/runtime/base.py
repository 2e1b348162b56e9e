"""The WASM runtime interface the agent and the gateway rely on.

A runtime runs WASI preview 1 *command* modules: ``_start`` with the request
body on stdin, its stdout as the answer. Two implementations pass one shared
test suite (tests/agent/test_runtimes.py): wasmtime in process, WasmEdge
through its C API in worker processes.

Lifecycle, matching the agent's atomic release:

1. ``prepare(sha256, path)`` before the release's database transaction:
   compile / AOT-compile the module (idempotent, cached by content hash). Any
   failure here aborts the release while nothing has changed.
2. ``activate(table)`` after commit: switch the whole function table at once
   (name -> FunctionRef). Cannot fail for prepared modules.
3. ``forget(sha256)`` when no state refers to a module any more: drop what is held
   in memory for it.

Files are collected from state, in one place for every runtime: compiled outputs
are named ``<runtime>-<sha256>[.<ext>]`` in :func:`compiled_dir` (files or
directories) and written through :func:`compile_output`, so
:func:`collect_compiled` removes whatever no kept module names, and any temporary
file no live compile holds, whichever process was interrupted doing what.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgesync.errors import EdgesyncError
from edgesync.protocol import FunctionRef


@dataclass(frozen=True)
class Limits:
    """Per-invocation sandbox limits."""

    timeout_seconds: float = 10.0
    memory_bytes: int = 128 * 1024 * 1024
    #: More on stdout fails the invocation (FUNCTION_OUTPUT_LIMIT): output is buffered.
    max_output_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Invocation:
    stdout: bytes
    stderr: bytes
    exit_code: int = 0


class FunctionFailed(EdgesyncError):
    """A function trapped, exited non-zero, timed out or hit its memory limit.

    ``code`` is one of FUNCTION_TRAP, FUNCTION_EXIT, FUNCTION_TIMEOUT,
    FUNCTION_MEMORY_LIMIT, FUNCTION_OUTPUT_LIMIT (stdout over
    ``Limits.max_output_bytes``), FUNCTION_FAILED (the process running it died:
    WasmEdge's worker was killed or crashed); the gateway answers 502 with this envelope.
    ``details`` holds ``function``, ``runtime``, ``stderr`` (its tail) and, per
    code, ``exit_code`` or ``reason``.
    """

    status = 502
    code = "FUNCTION_TRAP"


#: What programs print when an allocation failed (wasi-libc, Rust, Go, Python): a
#: failed run saying so is FUNCTION_MEMORY_LIMIT, not a trap or an exit.
OUT_OF_MEMORY = re.compile(
    rb"out of memory|memory allocation of \d+ bytes failed|cannot allocate memory"
    rb"|memory\.grow failed|MemoryError",
    re.IGNORECASE,
)

#: How much of a failed function's stderr an error's details carry (its end).
STDERR_TAIL_BYTES = 2048


def function_failed(
    code: str, message: str, *, function: str, runtime: str, stderr: bytes, **details: object
) -> FunctionFailed:
    """A :class:`FunctionFailed` with the details both runtimes report alike."""
    tail = stderr[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
    body: dict[str, object] = {"function": function, "runtime": runtime, "stderr": tail}
    body.update(details)
    return FunctionFailed(message, code=code, details=body)


class FunctionNotDeployed(EdgesyncError):
    status = 404
    code = "FUNCTION_NOT_FOUND"


class ModuleRejected(EdgesyncError):
    """The runtime cannot load a module (compile or AOT failure): permanent.

    ``INVALID_MODULE`` for what is no valid WASI command; ``MODULE_REJECTED`` for a
    valid one this node refuses to run (its declared memory exceeds the limit).
    """

    status = 422
    code = "INVALID_MODULE"


class RuntimeUnavailable(EdgesyncError):
    """The requested runtime is not installed or cannot start a function."""

    status = 503
    code = "RUNTIME_UNAVAILABLE"
    retryable = True


class Runtime(Protocol):
    #: ``"wasmtime"`` or ``"wasmedge"``, exactly: status files and health answers carry it.
    name: str
    #: The engine's own version (e.g. WasmEdge's ``0.14.1``, from the library itself).
    version: str

    def prepare(self, sha256: str, module_path: Path) -> None:
        """Compile ``module_path`` (content hash ``sha256``); raise :class:`ModuleRejected`."""
        ...

    def prepare_many(self, modules: Iterable[tuple[str, Path]]) -> None:
        """:meth:`prepare` each ``(sha256, module_path)``, in parallel where the runtime can."""
        ...

    def activate(self, table: Mapping[str, FunctionRef]) -> None:
        """Make ``table`` the set of invocable functions, atomically."""
        ...

    def functions(self) -> dict[str, FunctionRef]:
        """The active function table."""
        ...

    async def invoke(
        self, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits
    ) -> Invocation:
        """Run function ``name``; raise :class:`FunctionFailed` / :class:`FunctionNotDeployed`."""
        ...

    def forget(self, sha256: str) -> None:
        """Drop compiled artifacts of a module no state refers to."""
        ...

    def close(self) -> None: ...


def env_pairs(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``env`` as WASI environment pairs; refuse what no runtime can pass on.

    A name must be non-empty and contain neither ``=`` nor NUL, and must not start
    with ``-`` (the WasmEdge CLI takes it as an option); a value must not contain NUL.
    """
    pairs = []
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or key.startswith("-") or "\0" in value:
            raise ValueError(f"invalid environment variable for a function: {key!r}")
        pairs.append((key, value))
    return pairs


def compiled_dir(data_dir: Path) -> Path:
    """Where runtimes keep compiled modules (``<runtime>-<sha256>.<ext>``)."""
    return data_dir / "compiled"


#: ``<runtime>-<sha256>`` then optionally ``.<anything>``: the module a compiled output is of.
COMPILED_NAME = re.compile(r"[a-z0-9_]+-(?P<sha256>[0-9a-f]{64})(?:\..*)?", re.DOTALL)


@contextlib.contextmanager
def compile_output(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` to compile into; renamed onto ``final`` on success.

    The temporary file (``.<final name>.<random>``, mode 0600) is ``flock``-ed until
    renamed or removed: :func:`collect_compiled`, in this process or another, removes
    only temporary files nobody holds, so a live compile is never taken for debris
    and a killed one's never outlives the next collection.
    """
    final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    temporary = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield temporary
        with open(temporary, "rb+") as written:  # the compiler may have used its own fd
            os.fsync(written.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    finally:
        os.close(fd)


def collect_compiled(data_dir: Path, keep: Set[str]) -> list[Path]:
    """Remove compiled outputs of modules not in ``keep`` and abandoned temporary files.

    Derived from state alone: an output of a module no state names goes, whether its
    source was collected just now or by a run killed half-way through.
    """
    directory = compiled_dir(data_dir)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith("."):
            gone = _remove_if_abandoned(entry)
        else:
            match = COMPILED_NAME.fullmatch(entry.name)
            gone = match is not None and match["sha256"] not in keep and _remove(entry)
        if gone:
            removed.append(entry)
    return removed


def _remove_if_abandoned(path: Path) -> bool:
    """Remove a temporary file unless a live :func:`compile_output` holds its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:  # a symbolic link: no compile writes through one
        return path.is_symlink() and _remove(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # being written right now
    try:
        return _remove(path)
    finally:
        os.close(fd)


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    return True


def modules_dir(data_dir: Path) -> Path:
    """Where the agent keeps verified modules, by content hash."""
    return data_dir / "artifacts" / "sha256"


def module_path(data_dir: Path, sha256: str) -> Path:
    return modules_dir(data_dir) / f"{sha256}.wasm"
