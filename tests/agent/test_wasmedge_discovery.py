"""Finding WasmEdge in every form it is installed in, and never falling back silently.

Each form runs the real WasmEdge: the private root ``build/wasmedge.sh`` provisions
(Debian 13 packages under their own loader) or, on Debian 13, the distribution's
``/usr/bin/wasmedge``. The worker must load the ``libwasmedge`` the CLI really
loads, whatever the CLI's name, path or output.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import ControlPlane, example, run_cli
from test_runtimes import ECHO, LIMITS, _wasmedge_or_skip, deploy

from agent.runtime import open_runtime
from agent.runtime.base import Runtime, RuntimeUnavailable
from agent.runtime.wasmedge import discovery
from agent.runtime.wasmedge.discovery import Installation, find_installation
from agent.runtime.wasmedge.runtime import WasmEdgeRuntime

SYSROOT = discovery.PRIVATE_ROOT / "sysroot"


def _parts() -> tuple[str | None, str, str]:
    """(loader or None, the folder of libwasmedge and its libraries, the CLI binary).

    The private root's Debian 13 files, or Debian 13's own package; read from the
    disk, so tests that hide every default from discovery still find them.
    """
    if (SYSROOT / "usr" / "bin" / "wasmedge").exists():
        [loader] = glob.glob(str(SYSROOT / "usr" / "lib" / "*" / "ld-linux*.so*"))
        return loader, str(Path(loader).parent), str(SYSROOT / "usr" / "bin" / "wasmedge")
    libraries = glob.glob("/usr/lib/*/libwasmedge.so.0")
    if not libraries or not Path("/usr/bin/wasmedge").exists():
        reason = "no WasmEdge files: run build/wasmedge.sh (or apt-get install wasmedge)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test WasmEdge discovery: {reason}")
        pytest.skip(reason)
    return None, str(Path(libraries[0]).parent), "/usr/bin/wasmedge"


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _runner(library_path: str, argv0: str = "wasmedge") -> str:
    """A shell command prefix running the real CLI over ``library_path`` as ``argv0``."""
    loader, _, binary = _parts()
    if loader is None:
        return f"LD_LIBRARY_PATH='{library_path}' exec -a '{argv0}' '{binary}'"
    return f"exec '{loader}' --library-path '{library_path}' --argv0 '{argv0}' '{binary}'"


@pytest.fixture
def no_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing but what a test puts in place: no env, no private folder, empty PATH."""
    monkeypatch.delenv("EDGESYNC_WASMEDGE", raising=False)
    monkeypatch.setattr(discovery, "PRIVATE_ROOT", tmp_path / "no-private-root")
    monkeypatch.setattr(discovery, "DISTRO_LIBRARIES", str(tmp_path / "no-distro" / "*.so.0"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


@pytest.fixture
def opened() -> Iterator[list[Runtime]]:
    runtimes: list[Runtime] = []
    yield runtimes
    for runtime in runtimes:
        runtime.close()


async def _runs(installation: Installation, data_dir: Path, opened: list[Runtime]) -> str:
    """Start workers on ``installation``, run a function; the runtime's version."""
    runtime = WasmEdgeRuntime(data_dir, installation, limits=LIMITS, workers=1)
    opened.append(runtime)
    deploy(runtime, data_dir, echo=ECHO)
    assert (await runtime.invoke("echo", b"found", {}, LIMITS)).stdout == b"found"
    return runtime.version


async def test_a_cli_printing_its_full_path_as_argv0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Runtime]
) -> None:
    # What Debian 13's wasmedge prints when found through PATH: "/usr/bin/wasmedge version".
    _, libdir, _ = _parts()
    cli = _script(tmp_path / "bin" / "wasmedge", _runner(libdir, "/usr/bin/wasmedge") + ' "$@"')
    done = await asyncio.create_subprocess_exec(cli, "--version", stdout=subprocess.PIPE)
    printed, _ = await done.communicate()
    assert printed.startswith(b"/usr/bin/wasmedge version 0.14")
    monkeypatch.setenv("EDGESYNC_WASMEDGE", str(cli))
    installation = find_installation()
    assert installation is not None
    assert Path(installation.library).name.startswith("libwasmedge.so")
    assert (await _runs(installation, tmp_path / "node", opened)).startswith("0.14")


async def test_a_symlink_and_a_wrapper_that_does_not_exec(
    tmp_path: Path, no_defaults: None, monkeypatch: pytest.MonkeyPatch, opened: list[Runtime]
) -> None:
    _, libdir, _ = _parts()
    real = _script(tmp_path / "real" / "wasmedge", _runner(libdir) + ' "$@"')
    # A wrapper that stays the parent: the library is mapped by its child.
    child = _script(tmp_path / "child" / "wasmedge", f'"{real}" "$@"')
    link_dir = tmp_path / "on-path"
    link_dir.mkdir()
    (link_dir / "wasmedge").symlink_to(child)
    monkeypatch.setenv("PATH", str(link_dir))
    installation = find_installation()
    assert installation is not None and "$PATH" in installation.source
    assert Path(installation.library).parent == Path(libdir).resolve()
    await _runs(installation, tmp_path / "node", opened)


async def test_the_installer_layout_as_a_root_folder(
    tmp_path: Path, no_defaults: None, monkeypatch: pytest.MonkeyPatch, opened: list[Runtime]
) -> None:
    # ~/.wasmedge: bin/wasmedge beside lib/libwasmedge.so.0, which it loads from there.
    _, libdir, _ = _parts()
    root = tmp_path / "dot-wasmedge"
    (root / "lib").mkdir(parents=True)
    shutil.copy(Path(libdir) / "libwasmedge.so.0", root / "lib" / "libwasmedge.so.0")
    _script(root / "bin" / "wasmedge", _runner(f"{root / 'lib'}:{libdir}") + ' "$@"')
    monkeypatch.setenv("EDGESYNC_WASMEDGE", str(root))
    installation = find_installation()
    assert installation is not None
    assert installation.library == str(root / "lib" / "libwasmedge.so.0")
    await _runs(installation, tmp_path / "node", opened)


def test_the_private_folder_comes_before_path(
    tmp_path: Path, no_defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, libdir, _ = _parts()
    private = tmp_path / "private"
    _script(private / "bin" / "wasmedge", _runner(libdir) + ' "$@"')
    _script(tmp_path / "on-path" / "wasmedge", "exit 1")  # would fail if it were used
    monkeypatch.setattr(discovery, "PRIVATE_ROOT", private)
    monkeypatch.setenv("PATH", str(tmp_path / "on-path"))
    installation = find_installation()
    assert installation is not None and "private folder" in installation.source


def test_the_distribution_library_comes_last(
    tmp_path: Path, no_defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_installation() is None  # nothing at all: None, not an error
    distro = tmp_path / "usr-lib" / "arch-linux-gnu"
    distro.mkdir(parents=True)
    (distro / "libwasmedge.so.0").write_bytes(b"")
    monkeypatch.setattr(
        discovery, "DISTRO_LIBRARIES", str(tmp_path / "usr-lib" / "*" / "libwasmedge.so.0")
    )
    installation = find_installation()
    assert installation is not None
    assert installation.library == str(distro / "libwasmedge.so.0")
    assert installation.loader is None


def test_a_library_that_cannot_load_is_never_a_silent_fallback(
    tmp_path: Path,
    no_defaults: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A root folder holding only a library this interpreter's loader cannot load.
    root = tmp_path / "broken-root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "libwasmedge.so.0").write_bytes(b"not a shared object")
    monkeypatch.setenv("EDGESYNC_WASMEDGE", str(root))
    with pytest.raises(RuntimeUnavailable) as caught:
        open_runtime("wasmedge", tmp_path / "node")
    assert "WasmEdge is not available" in caught.value.message
    assert "libwasmedge.so.0" in caught.value.message
    with caplog.at_level(logging.INFO, logger="edgesync.runtime"):
        runtime = open_runtime("auto", tmp_path / "node")
    try:
        assert runtime.name == "wasmtime"
        assert any(
            "runtime: wasmtime, because" in r.message and "libwasmedge" in r.message
            for r in caplog.records
        )
    finally:
        runtime.close()


def test_auto_logs_its_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opened: list[Runtime]
) -> None:
    _wasmedge_or_skip()
    with caplog.at_level(logging.INFO, logger="edgesync.runtime"):
        runtime = open_runtime("auto", tmp_path / "node")
    opened.append(runtime)
    assert runtime.name == "wasmedge"
    [line] = [r.message for r in caplog.records if r.message.startswith("runtime:")]
    assert "auto: WasmEdge found and working" in line and runtime.version in line


async def test_status_shows_the_runtime_and_its_version(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    _, libdir, _ = _parts()
    cli = _script(tmp_path / "bin" / "wasmedge", _runner(libdir, "/usr/bin/wasmedge") + ' "$@"')
    cp = control_plane
    await cp.upload("echo", "1.0.0", example("echo"))
    data_dir = tmp_path / "edge"
    env = {"EDGESYNC_WASMEDGE": str(cli)}
    code, out, err = await run_cli(
        *("agent", "--server", cp.url, "--data-dir", str(data_dir), "--runtime", "wasmedge"),
        *("--no-gateway", "--once", "--enrollment-token", await cp.enrollment_token()),
        env=env,
    )
    assert code == 0, err
    assert "runtime: wasmedge 0.14" in err
    code, out, err = await run_cli("agent", "--data-dir", str(data_dir), "status", env=env)
    assert code == 0, err
    agent = json.loads(out)["agent"]
    assert agent["runtime"] == "wasmedge"
    assert agent["runtime_version"].startswith("0.14")


def test_maps_name_the_loader_and_folders_on_any_architecture() -> None:
    # What a wrapper running a private Debian 13 root shows on an aarch64 device.
    root = "/opt/edgesync/wasmedge/sysroot/usr/lib/aarch64-linux-gnu"
    mapped = [
        "/opt/edgesync/wasmedge/sysroot/usr/bin/wasmedge",
        f"{root}/ld-linux-aarch64.so.1",
        f"{root}/libwasmedge.so.0.1.0",
        f"{root}/libLLVM.so.19.1",
        "/opt/edgesync/wasmedge/sysroot/usr/lib/aarch64-linux-gnu/wasmedge/libwasi_logging.so",
        "/usr/lib/locale/C.utf8/LC_CTYPE",
    ]
    found = discovery._installation_from_maps(mapped, "probe")
    assert found.library == f"{root}/libwasmedge.so.0.1.0"
    assert found.loader == f"{root}/ld-linux-aarch64.so.1"
    assert found.library_dirs == [root, f"{root}/wasmedge"]
    command, _ = discovery.worker_command(found)
    assert command[:2] == [found.loader, "--library-path"]
    assert command[2].split(":")[:2] == [root, f"{root}/wasmedge"]  # WasmEdge's own first
    assert command[3:] == [
        os.path.realpath(sys.executable),
        "-s",
        "-m",
        "agent.runtime.wasmedge.worker",
    ]
