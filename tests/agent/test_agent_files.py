"""The node's files: private whatever the umask, and nothing kept that no state names.

* Modes: a real ``edgesync agent`` under umask 022 keeps its data dir 0700 and
  every file in it 0600 (the token, ``edge.db`` and its ``-wal``/``-shm`` while it
  runs, modules, compiled modules); modes found wider are narrowed at start.
* Collection is derived from state: files an interrupted run left behind (a
  compiled module whose source was already collected, a compile's temporary
  file, a partial download, a module no state names) go at start-up and after
  the next release, however fresh they are; a compile in progress is left alone.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import subprocess
from pathlib import Path

from agent_support import (
    WAIT,
    ControlPlane,
    State,
    agent_env,
    cached_modules,
    edgesync_argv,
    eventually,
    hello,
    new_agent,
    sync_until,
)

from agent.runtime.base import compiled_dir, modules_dir

PERMISSIVE_UMASK = 0o022


def loose_modes(data_dir: Path) -> list[str]:
    """Everything in ``data_dir`` (itself included) that group or others may use."""
    paths = [data_dir, *data_dir.rglob("*")]
    return [
        f"{path.relative_to(data_dir.parent)} {stat.S_IMODE(path.lstat().st_mode):o}"
        for path in paths
        if not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]


async def agent_process(cp: ControlPlane, data_dir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *edgesync_argv(),
        *("agent", "--server", cp.url, "--data-dir", str(data_dir)),
        *("--runtime", "wasmtime", "--no-gateway", "--poll-interval", "0.2"),
        *args,
        env=agent_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        umask=PERMISSIVE_UMASK,
    )


async def test_the_data_dir_is_private_whatever_the_umask(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    module = await cp.upload("hello", "1.0.0", hello("v1"))
    data_dir = tmp_path / "edge"
    token = await cp.enrollment_token()
    process = await agent_process(cp, data_dir, "--enrollment-token", token)
    try:
        database = data_dir / "edge.db"
        wanted = [
            data_dir / "node.json",
            database,
            Path(f"{database}-wal"),
            Path(f"{database}-shm"),
            modules_dir(data_dir) / f"{module['sha256']}.wasm",
            compiled_dir(data_dir) / f"wasmtime-{module['sha256']}.cwasm",
        ]
        await eventually(
            lambda: all(path.exists() for path in wanted), "the node's files", within=WAIT
        )
        await eventually(
            lambda: (data_dir / "agent-status.json").exists(), "a status file", within=WAIT
        )
        assert loose_modes(data_dir) == []
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), WAIT)

    # Widened by hand, or written by an older version: narrowed at the next start.
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    process = await agent_process(cp, data_dir, "--once")
    assert await asyncio.wait_for(process.wait(), WAIT) == 0
    assert loose_modes(data_dir) == []


def leave_debris(data_dir: Path, orphan_sha256: str) -> list[Path]:
    """What interrupted runs leave, all of it fresh (no age threshold may save it)."""
    compiled = compiled_dir(data_dir)
    debris = [
        # Killed between deleting a module and deleting its compiled form.
        compiled / f"wasmtime-{orphan_sha256}.cwasm",
        # Another runtime's output of the same module (a directory, as WasmEdge's names).
        compiled / f"wasmedge-{orphan_sha256}.names",
        # Killed mid-compile, and mid-download.
        compiled / f".wasmtime-{'e' * 64}.cwasm.x1y2z3",
        data_dir / "artifacts" / "tmp" / f"{'f' * 64}.0123.part",
        # A module no state names.
        modules_dir(data_dir) / f"{'d' * 64}.wasm",
    ]
    for path in debris:
        if path.suffix == ".names":
            path.mkdir(parents=True)
            (path / "hello").write_text("x")
        else:
            path.write_bytes(b"left behind")
    return debris


async def test_collection_is_derived_from_state(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    v1 = await cp.upload("hello", "1.0.0", hello("v1"))
    data_dir = tmp_path / "edge-1"
    agent = await new_agent(cp, data_dir)
    try:
        await sync_until(cp, [agent], State.want(0, hello="1.0.0"))
    finally:
        await agent.close()
    kept = compiled_dir(data_dir) / f"wasmtime-{v1['sha256']}.cwasm"
    assert kept.exists()

    # A compile in progress (its temporary file locked, as compile_output holds it) is
    # left alone; everything else goes at start-up.
    live = compiled_dir(data_dir) / f".wasmtime-{'c' * 64}.cwasm.live"
    live.write_bytes(b"being written")
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        debris = leave_debris(data_dir, "a" * 64)
        restarted = await new_agent(cp, data_dir, enroll=False)
        assert [path for path in debris if path.exists()] == []
        assert live.exists()
    try:
        assert kept.exists() and cached_modules(data_dir) == {v1["sha256"]}
        # ...and after every release, the superseded module and its compiled form too.
        debris = leave_debris(data_dir, "b" * 64)
        await cp.upload("hello", "2.0.0", hello("v2"))
        await sync_until(cp, [restarted], State.want(0, hello="2.0.0"))
    finally:
        await restarted.close()
    assert [path for path in debris if path.exists()] == []
    assert not kept.exists() and v1["sha256"] not in cached_modules(data_dir)
    assert not live.exists()  # no longer held: an abandoned temporary like any other
    assert sorted(os.listdir(compiled_dir(data_dir))) == sorted(
        f"wasmtime-{sha}.cwasm" for sha in cached_modules(data_dir)
    )
