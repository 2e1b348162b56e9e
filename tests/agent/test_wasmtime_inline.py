"""wasmtime's inline attempt: a call first runs on the event loop's thread.

A call that outlasts its inline budget is stopped and run again on a worker
thread; a module that can sleep in a host call (``poll_oneoff``) never runs inline,
so it cannot hold up the event loop (the agent's gateway and sync loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_runtimes import ECHO, FD_WRITE, PRINT, WASI, deploy

from agent.runtime.base import Limits
from agent.runtime.wasmtime_runtime import WasmtimeRuntime

LIMITS = Limits(timeout_seconds=5.0, memory_bytes=4 * 1024 * 1024)

# Counts to 300 million (far beyond the inline budget), then prints once.
BUSY = f"""(module {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "done\\n")
  {PRINT}
  (func (export "_start") (local $i i32)
    (loop $more
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 300000000))))
    (call $print (i32.const 1) (i32.const 64) (i32.const 5))))"""

# Sleeps 1 s in poll_oneoff (a relative monotonic-clock subscription), then prints.
SLEEPER = f"""(module {FD_WRITE}
  {WASI.format("poll_oneoff", "(param i32 i32 i32 i32) (result i32)")}
  (memory (export "memory") 1)
  (data (i32.const 512) "slept\\n")
  {PRINT}
  (func (export "_start")
    (i32.store8 (i32.const 264) (i32.const 0))
    (i32.store (i32.const 272) (i32.const 1))
    (i64.store (i32.const 280) (i64.const 1000000000))
    (drop (call $poll_oneoff (i32.const 256) (i32.const 384) (i32.const 1) (i32.const 448)))
    (call $print (i32.const 1) (i32.const 512) (i32.const 6))))"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[WasmtimeRuntime]:
    instance = WasmtimeRuntime(tmp_path / "node", limits=LIMITS)
    try:
        yield instance
    finally:
        instance.close()


async def test_a_call_beyond_the_inline_budget_runs_again_once(
    runtime: WasmtimeRuntime, tmp_path: Path
) -> None:
    deploy(runtime, tmp_path / "node", busy=BUSY)
    result = await runtime.invoke("busy", b"", {}, LIMITS)
    assert (result.stdout, result.stderr) == (b"done\n", b"")  # the stopped attempt left nothing


async def test_a_sleeping_function_never_holds_up_the_event_loop(
    runtime: WasmtimeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy(runtime, tmp_path / "node", sleeper=SLEEPER, echo=ECHO)
    ran_on: dict[str, list[str]] = {}
    run = runtime._run

    def recording_run(loaded: Any, name: str, *args: Any) -> Any:
        ran_on.setdefault(name, []).append(threading.current_thread().name)
        return run(loaded, name, *args)

    monkeypatch.setattr(runtime, "_run", recording_run)
    sleeping = asyncio.ensure_future(runtime.invoke("sleeper", b"", {}, LIMITS))
    await asyncio.sleep(0)
    assert (await runtime.invoke("echo", b"meanwhile", {}, LIMITS)).stdout == b"meanwhile"
    assert not sleeping.done()
    assert (await sleeping).stdout == b"slept\n"
    main = threading.current_thread().name
    assert ran_on["echo"] == [main]  # inline: no hand-off
    assert len(ran_on["sleeper"]) == 1 and ran_on["sleeper"][0] != main  # never inline
