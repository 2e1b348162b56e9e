"""Finding WasmEdge: which ``libwasmedge``, loaded by which dynamic loader.

Search order (the first that exists is used, and must work):

1. ``$EDGESYNC_WASMEDGE``: a ``wasmedge`` executable, or a WasmEdge root folder
   (``ROOT/bin/wasmedge``, else ``ROOT/lib*/libwasmedge.so.0``);
2. the private folder ``build/wasmedge.sh`` fills in a source checkout (``.wasmedge/``);
3. ``wasmedge`` on ``PATH``;
4. the distribution's library, ``/usr/lib/*/libwasmedge.so.0`` (any architecture).

A ``wasmedge`` executable may be anything that runs WasmEdge: the distribution's
binary, the official installer's, a symlink, or a wrapper script running a private
root through its own loader. Nothing is read from its name or its output: it is
started on a module that waits for its stdin, and the memory maps of the process
(or of its descendants, for a wrapper that does not ``exec``) name the
``libwasmedge`` and the loader it really runs on, and the folders of every library
it loaded. Workers then load that library under that loader.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.runtime.base import RuntimeUnavailable
from edgesync.pythonpath import child_pythonpath

ENV = "EDGESYNC_WASMEDGE"
PRIVATE_ROOT = Path(__file__).resolve().parents[3] / ".wasmedge"
#: Where distributions put the library (Debian: /usr/lib/<multiarch triplet>/).
DISTRO_LIBRARIES = "/usr/lib/*/libwasmedge.so.0"
#: ``_start`` reads stdin once (fd_read): the CLI waits until the probe closes it.
WAIT_FOR_STDIN_WASM = bytes.fromhex(
    "0061736d01000000010c0260047f7f7f7f017f60000002220116776173695f736e617073686f745f"
    "70726576696577310766645f726561640000030201010503010001070a01065f737461727400010a"
    "1e011c00410041c00036020041044110360200410041004101410810001a0b"
)
PROBE_SECONDS = 20.0
_LOADER_NAME = re.compile(r"^ld-linux[^/]*\.so[.\d]*$|^ld[^/]*\.so\.\d+$|^ld64\.so\.\d+$")
_LIBRARY = re.compile(r"(^|/)lib[^/]*\.so(\.\d+)*$")


@dataclass(frozen=True)
class Installation:
    """A ``libwasmedge`` and how to load it."""

    library: str
    #: A dynamic loader to start workers under (None: this interpreter's own).
    loader: str | None = None
    #: Library folders, in the order the CLI found its libraries.
    library_dirs: list[str] = field(default_factory=list)
    #: How it was found, for the log: "wasmedge CLI /usr/bin/wasmedge ($PATH)".
    source: str = ""


def find_installation() -> Installation | None:
    """The first WasmEdge of the search order, or None when there is none at all.

    Raises :class:`RuntimeUnavailable` when one is found but does not run.
    """
    configured = os.environ.get(ENV, "").strip()
    if configured:
        return _from_configured(Path(configured).expanduser())
    private = PRIVATE_ROOT / "bin" / "wasmedge"
    if _is_executable(private):
        return probe_cli(str(private), f"private folder {PRIVATE_ROOT}")
    on_path = shutil.which("wasmedge")
    if on_path:
        return probe_cli(on_path, "$PATH")
    for library in sorted(glob.glob(DISTRO_LIBRARIES)):
        return Installation(library, source="distribution library")
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_configured(path: Path) -> Installation:
    if _is_executable(path):
        return probe_cli(str(path), f"${ENV}")
    if path.is_dir():
        if _is_executable(path / "bin" / "wasmedge"):
            return probe_cli(str(path / "bin" / "wasmedge"), f"${ENV} root")
        for pattern in ("lib*/libwasmedge.so.0", "lib*/*/libwasmedge.so.0", "**/libwasmedge.so.0"):
            found = sorted(path.glob(pattern))
            if found:
                return Installation(str(found[0]), source=f"${ENV} root {path}")
    raise RuntimeUnavailable(
        f"{ENV}={path} is neither a wasmedge executable nor a WasmEdge root folder"
    )


def probe_cli(command: str, how: str) -> Installation:
    """Run ``command`` on a module waiting for stdin and read what it loaded."""
    with tempfile.TemporaryDirectory(prefix="edgesync-wasmedge-probe-") as scratch:
        module = Path(scratch) / "probe.wasm"
        module.write_bytes(WAIT_FOR_STDIN_WASM)
        try:
            process = subprocess.Popen(
                [command, str(module)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot run {command}: {exc.strerror}") from exc
        try:
            maps = _wait_for_library(process)
        finally:
            _finish(process)
    if maps is None:
        stderr = process.stderr.read() if process.stderr else b""
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeUnavailable(
            f"{command} ({how}) did not load libwasmedge (exit {process.returncode}: {tail[0]})"
        )
    return _installation_from_maps(maps, f"wasmedge CLI {command} ({how})")


def _wait_for_library(process: subprocess.Popen[bytes]) -> list[str] | None:
    """The mapped files of the process (tree) that loaded libwasmedge, or None."""
    deadline = time.monotonic() + PROBE_SECONDS
    while time.monotonic() < deadline:
        for pid in _process_tree(process.pid):
            files = _mapped_files(pid)
            if any(Path(f).name.startswith("libwasmedge") for f in files):
                return files
        if process.poll() is not None:
            return None
        time.sleep(0.01)
    return None


def _finish(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        assert process.stdin is not None
        process.stdin.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, 9)
        process.wait()


def _process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += children
        frontier = children
    return tree


def _mapped_files(pid: int | str) -> list[str]:
    """Distinct file paths mapped by ``pid``, in first-mapped order."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    seen: dict[str, None] = {}
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            seen.setdefault(parts[5].removesuffix(" (deleted)"), None)
    return list(seen)


def _loader_of(files: list[str]) -> str | None:
    return next((f for f in files if _LOADER_NAME.match(Path(f).name)), None)


def _installation_from_maps(files: list[str], source: str) -> Installation:
    library = next(f for f in files if Path(f).name.startswith("libwasmedge"))
    libraries = [f for f in files if _LIBRARY.search(f)]
    dirs = list(dict.fromkeys(str(Path(f).parent) for f in libraries))
    loader = _loader_of(files)
    ours = _loader_of(_mapped_files("self"))
    if loader is None or (ours is not None and os.path.realpath(loader) == os.path.realpath(ours)):
        return Installation(library, None, dirs, source)
    return Installation(library, loader, dirs, source)


def worker_command(installation: Installation) -> tuple[list[str], dict[str, str]]:
    """The command and environment that start a worker on ``installation``.

    Under another loader, the library path is the CLI's folders first, then this
    interpreter's own (for the extension modules' libraries); the interpreter is
    the real binary (the loader cannot run a venv's symlink chain differently, but
    ``/proc/self/exe`` is then the loader, so its real path is what counts).
    """
    python = os.path.realpath(sys.executable)
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    env.pop("PYTHONHOME", None)
    program = [python, "-s", "-m", "agent.runtime.wasmedge.worker"]
    if installation.loader is None:
        if installation.library_dirs:
            extra = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*installation.library_dirs, extra]).strip(
                os.pathsep
            )
        return program, env
    own = [str(Path(f).parent) for f in _mapped_files("self") if _LIBRARY.search(f)]
    search = list(dict.fromkeys([*installation.library_dirs, *own]))
    return [installation.loader, "--library-path", os.pathsep.join(search), *program], env
