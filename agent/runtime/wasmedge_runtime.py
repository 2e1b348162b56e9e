"""WasmEdge, through its CLI: one ``wasmedge`` process per invocation.

``prepare`` AOT-compiles a module once (``wasmedge compile --interruptible``) into
``<data_dir>/compiled/wasmedge-<sha256>.so``; ``invoke`` runs that file with the
limits on the command line::

    wasmedge --time-limit MS --memory-page-limit PAGES --env K=V ... -- FILE

with the body piped to stdin and stdout/stderr captured (stdout capped at
``Limits.max_output_bytes``). Observed with WasmEdge 0.14.1 (NOTES.md):

* ``--time-limit`` only stops AOT code compiled with ``--interruptible``; without
  it an endless loop runs on for ever. A stack overflow in AOT code hangs even so,
  so an asyncio backstop kills the process group shortly after the limit.
* Failures are logged by WasmEdge as ``[date time] [error] ...`` lines **on stdout**
  (spdlog's default sink; no option moves them), after the guest's own output:
  a trap exits 134 ("execution failed: unreachable"), the time limit exits 134
  ("execution interrupted"), a refused ``memory.grow`` logs "Memory grow page
  failed, exceeded limited N page" (the guest then copes or fails), and a memory
  whose minimum exceeds the limit logs "Memory Instance: Limited N page" and may
  even exit 0. ``proc_exit(n)`` exits n with no log line.
* The guest's ``argv[0]`` is the file name with its extension replaced by
  ``.wasm``; a per-function symlink makes it ``<name>.wasm`` (wasmtime: ``<name>``).
* ``--env`` values are visible in the process list to local users: the gateway
  never passes credentials (it drops ``Authorization``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.runtime.base import (
    FunctionFailed,
    FunctionNotDeployed,
    Invocation,
    Limits,
    ModuleRejected,
    RuntimeUnavailable,
    compiled_dir,
    env_pairs,
    function_failed,
    module_path,
    sweep_compile_leftovers,
)
from edgesync.protocol import NAME_RE, FunctionRef

log = logging.getLogger("edgesync.runtime.wasmedge")

WASM_PAGE = 64 * 1024
#: Process start (~20 ms) plus loading the .so, beyond the limit WasmEdge enforces.
BACKSTOP_GRACE_SECONDS = 1.0
COMPILE_TIMEOUT_SECONDS = 600.0
STDERR_KEEP = 64 * 1024
READ_CHUNK = 256 * 1024
#: WasmEdge's own log lines: "[2026-11-30 01:43:05.555] [error] message". WasmEdge 0.14
#: writes them to *stdout*, after whatever the guest wrote (not always at a line start).
LOG_LINE = re.compile(
    rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\] \[(error|warning|info|debug|trace|critical)\] ?"
    rb"([^\n]*)\n?"
)
GROW_REFUSED = "Memory grow page failed"
MEMORY_LIMITED = "Memory Instance: Limited"


def wasmedge_version(command: Sequence[str], timeout: float = 10.0) -> str | None:
    """``wasmedge --version``'s first line, or None when it does not run."""
    try:
        done = subprocess.run(
            [*command, "--version"],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = done.stdout.decode("utf-8", "replace").strip().splitlines()[:1]
    if done.returncode != 0 or not first or not first[0].startswith("wasmedge version"):
        return None
    return first[0]


class WasmEdgeRuntime:
    """The :class:`~agent.runtime.base.Runtime` on the ``wasmedge`` CLI."""

    name = "wasmedge"

    def __init__(
        self,
        data_dir: Path,
        command: Sequence[str],
        *,
        max_processes: int | None = None,
        version: str | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._compiled = compiled_dir(data_dir)
        self._command = list(command)
        self.version = version or wasmedge_version(self._command)
        if self.version is None:
            raise RuntimeUnavailable(f"{' '.join(self._command)} does not run")
        self._prepared: set[str] = set()
        self._links: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._table: dict[str, FunctionRef] = {}
        self._slots = asyncio.Semaphore(max_processes or max(4, 8 * (os.cpu_count() or 1)))
        self._drop_stale_compiles()
        sweep_compile_leftovers(self._compiled, COMPILE_TIMEOUT_SECONDS * 2)

    # -- lifecycle ---------------------------------------------------------------

    def prepare(self, sha256: str, module_path: Path) -> None:
        if sha256 in self._prepared:
            return
        with self._lock:
            if sha256 not in self._prepared:
                if not self._so(sha256).exists():
                    self._compile(sha256, module_path)
                self._prepared.add(sha256)

    def activate(self, table: Mapping[str, FunctionRef]) -> None:
        self._table = dict(table)  # one reference swap: readers see old or new

    def functions(self) -> dict[str, FunctionRef]:
        return dict(self._table)

    def forget(self, sha256: str) -> None:
        with self._lock:
            self._prepared.discard(sha256)
            self._links = {link for link in self._links if link[0] != sha256}
            with contextlib.suppress(OSError):
                self._so(sha256).unlink()
            shutil.rmtree(self._names_dir(sha256), ignore_errors=True)

    def close(self) -> None:
        """Nothing to release: every invocation's process is gone when it returns."""

    # -- compiling ---------------------------------------------------------------

    def _so(self, sha256: str) -> Path:
        return self._compiled / f"wasmedge-{sha256}.so"

    def _names_dir(self, sha256: str) -> Path:
        return self._compiled / f"wasmedge-{sha256}.names"

    def _drop_stale_compiles(self) -> None:
        """AOT files are tied to the WasmEdge version that wrote them."""
        marker = self._compiled / "wasmedge.version"
        try:
            if marker.read_text().strip() == self.version:
                return
        except OSError:
            pass
        if self._compiled.is_dir():
            for stale in self._compiled.glob("wasmedge-*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._compiled.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{self.version}\n")

    def _compile(self, sha256: str, source: Path) -> None:
        try:
            wasm = source.read_bytes()
        except OSError as exc:
            raise ModuleRejected(f"module {sha256[:12]} cannot be read: {exc.strerror}") from exc
        if hashlib.sha256(wasm).hexdigest() != sha256:
            raise ModuleRejected(f"module file {source.name} does not match its SHA-256")
        check_command_module(wasm)
        target = self._so(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The output's extension picks the format: it must end in .so.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            try:
                done = subprocess.run(
                    [*self._command, "compile", "--interruptible", str(source), tmp],
                    capture_output=True,
                    timeout=COMPILE_TIMEOUT_SECONDS,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ModuleRejected(f"AOT compilation of {sha256[:12]} timed out") from exc
            except OSError as exc:
                raise RuntimeUnavailable(f"cannot run wasmedge: {exc}") from exc
            if done.returncode != 0 or os.path.getsize(tmp) == 0:
                errors = _log_messages(done.stderr + done.stdout)
                raise ModuleRejected(
                    f"WasmEdge cannot compile module {sha256[:12]}",
                    details={"error": "\n".join(errors)[-2000:]},
                )
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _program(self, name: str, sha256: str) -> Path:
        """The file to run: a link named after the function, for the guest's argv[0]."""
        target = self._so(sha256)
        if (sha256, name) in self._links:
            return self._names_dir(sha256) / name
        if not NAME_RE.fullmatch(name):
            return target
        link = self._names_dir(sha256) / name
        try:
            link.parent.mkdir(exist_ok=True)
            tmp = link.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(f"../{target.name}")
            tmp.replace(link)
        except OSError as exc:
            log.debug("no argv[0] link for %s: %s", name, exc)
            return target
        self._links.add((sha256, name))
        return link

    # -- invoking ----------------------------------------------------------------

    async def invoke(
        self, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits
    ) -> Invocation:
        ref = self._table.get(name)
        if ref is None:
            raise FunctionNotDeployed(f"function {name!r} is not deployed")
        pairs = env_pairs(env)
        if ref.sha256 not in self._prepared:
            path = module_path(self._data_dir, ref.sha256)
            await asyncio.to_thread(self.prepare, ref.sha256, path)
        argv = [
            *self._command,
            "--time-limit",
            str(max(1, math.ceil(limits.timeout_seconds * 1000))),
            "--memory-page-limit",
            str(max(1, limits.memory_bytes // WASM_PAGE)),
        ]
        for key, value in pairs:
            argv += ["--env", f"{key}={value}"]
        argv += ["--", str(self._program(name, ref.sha256))]
        async with self._slots:
            returncode, stdout, stderr, overflow = await self._run(name, argv, stdin, limits)
        return self._result(name, limits, returncode, stdout, stderr, overflow)

    async def _run(
        self, name: str, argv: list[str], stdin: bytes, limits: Limits
    ) -> tuple[int, bytes, bytes, bool]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: a kill reaches wrappers too
            )
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot start wasmedge: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        overflow = False

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                if stdin:
                    proc.stdin.write(stdin)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # it exited (or was killed) without reading everything
            finally:
                proc.stdin.close()

        # Both readers run to EOF whatever happens: on Python 3.11, Process.wait()
        # returns only once every pipe is disconnected, and a reader that stopped
        # early leaves its pipe paused for ever.
        async def collect_stdout() -> bytes:
            nonlocal overflow
            assert proc.stdout is not None
            out = bytearray()
            while chunk := await proc.stdout.read(READ_CHUNK):
                if not overflow:
                    out += chunk
                    if len(out) > limits.max_output_bytes:
                        overflow = True
                        out.clear()
                        _kill(proc)
            return bytes(out)

        async def collect_stderr() -> bytes:
            assert proc.stderr is not None
            err = bytearray()
            while chunk := await proc.stderr.read(READ_CHUNK):
                err += chunk
                if len(err) > 2 * STDERR_KEEP:
                    del err[:-STDERR_KEEP]
            return bytes(err[-STDERR_KEEP:])

        streams = asyncio.gather(feed(), collect_stdout(), collect_stderr())
        timed_out = False
        try:
            try:
                await asyncio.wait_for(
                    asyncio.shield(streams), limits.timeout_seconds + BACKSTOP_GRACE_SECONDS
                )
            except TimeoutError:
                timed_out = True
                _kill(proc)
            _, stdout, stderr = await streams  # EOF: the process group is gone
            await proc.wait()
        except BaseException:
            _kill(proc)  # cancelled (client gone, shutdown): no orphan keeps running
            raise
        if timed_out:
            raise function_failed(
                "FUNCTION_TIMEOUT",
                f"function {name!r} exceeded its time limit of {limits.timeout_seconds:g} s",
                function=name,
                runtime=self.name,
                stderr=LOG_LINE.sub(b"", stderr),
                limit_seconds=limits.timeout_seconds,
                reason="backstop",
            )
        assert proc.returncode is not None
        return proc.returncode, stdout, stderr, overflow

    def _result(
        self,
        name: str,
        limits: Limits,
        returncode: int,
        stdout: bytes,
        stderr: bytes,
        overflow: bool,
    ) -> Invocation:
        errors = _log_messages(stdout + b"\n" + stderr, levels=(b"error", b"critical"))
        guest_stderr = LOG_LINE.sub(b"", stderr)

        def fail(code: str, message: str, **details: object) -> FunctionFailed:
            return function_failed(
                code, message, function=name, runtime=self.name, stderr=guest_stderr, **details
            )

        if overflow:
            raise fail(
                "FUNCTION_OUTPUT_LIMIT",
                f"function {name!r} wrote more than {limits.max_output_bytes} bytes to stdout",
                limit_bytes=limits.max_output_bytes,
            )
        grow_refused = any(GROW_REFUSED in m for m in errors)
        if returncode == 0 and all(GROW_REFUSED in m for m in errors):
            # Success, perhaps after a refused grow the guest coped with (logged on stdout).
            return Invocation(LOG_LINE.sub(b"", stdout), guest_stderr, 0)
        text = "\n".join(errors)
        if returncode < 0:
            reason = f"killed by signal {-returncode}"
            with contextlib.suppress(ValueError):
                reason = f"killed by {signal.Signals(-returncode).name}"
            raise fail("FUNCTION_TRAP", f"function {name!r} trapped: {reason}", reason=reason)
        if "execution interrupted" in text:
            raise fail(
                "FUNCTION_TIMEOUT",
                f"function {name!r} exceeded its time limit of {limits.timeout_seconds:g} s",
                limit_seconds=limits.timeout_seconds,
                reason="time limit",
            )
        if grow_refused or MEMORY_LIMITED in text:
            exited = {"exit_code": returncode} if returncode not in (0, 134) else {}
            raise fail(
                "FUNCTION_MEMORY_LIMIT",
                f"function {name!r} exceeded its memory limit of {limits.memory_bytes} bytes",
                limit_bytes=limits.memory_bytes,
                reason=next((m for m in errors if GROW_REFUSED in m or MEMORY_LIMITED in m), text),
                **exited,
            )
        if not errors:
            raise fail(
                "FUNCTION_EXIT",
                f"function {name!r} exited with status {returncode}",
                exit_code=returncode,
            )
        reason = _first_reason(errors)
        raise fail(
            "FUNCTION_TRAP",
            f"function {name!r} trapped: {reason}",
            reason=reason,
            trace=text[:2000],
        )


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _log_messages(stderr: bytes, levels: Sequence[bytes] | None = None) -> list[str]:
    """WasmEdge's own log lines (of ``levels``, default all), without their prefix."""
    return [
        message.decode("utf-8", "replace").strip()
        for level, message in LOG_LINE.findall(stderr)
        if levels is None or level in levels
    ]


def _first_reason(messages: list[str]) -> str:
    """ "execution failed: unreachable, Code: 0x40a" -> "unreachable"."""
    for message in messages:
        if message.startswith(("execution failed:", "wasmedge runtime failed:")):
            return message.split(":", 1)[1].split(", Code:")[0].strip()
    return messages[0].split(", Code:")[0] if messages else "unknown error"


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise ModuleRejected("malformed WebAssembly module (truncated LEB128)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def check_command_module(wasm: bytes) -> None:
    """Refuse what is not a core WebAssembly module exporting a ``_start`` function.

    Only the section framing and the export section are read; WasmEdge's compiler
    validates the rest (wasmtime's does all of it in its runtime).
    """
    if wasm[:4] != b"\0asm":
        raise ModuleRejected("not a WebAssembly module (no \\0asm header)")
    if wasm[4:8] != b"\x01\0\0\0":
        raise ModuleRejected("not a WebAssembly core module, version 1 (a component?)")
    pos = 8
    has_start = False
    while pos < len(wasm):
        section = wasm[pos]
        size, pos = _leb128(wasm, pos + 1)
        end = pos + size
        if end > len(wasm):
            raise ModuleRejected("malformed WebAssembly module (section past the end)")
        if section == 7:
            count, at = _leb128(wasm, pos)
            for _ in range(count):
                length, at = _leb128(wasm, at)
                export, at = wasm[at : at + length], at + length
                if at >= end:
                    raise ModuleRejected("malformed WebAssembly module (export section)")
                kind = wasm[at]
                _, at = _leb128(wasm, at + 1)
                has_start = has_start or (export == b"_start" and kind == 0)
        pos = end
    if not has_start:
        raise ModuleRejected("module exports no _start function: not a WASI command")
