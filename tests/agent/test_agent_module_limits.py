"""A module declaring more memory than the node allows never reaches the release.

WasmEdge silently shrinks a module's declared minimum memory to the page limit
and runs it anyway (and wasmtime would fail it on every call): the agent refuses
such a module when it prepares the plan, before the release transaction, and
acks MODULE_REJECTED. Real agents, on both runtimes, against a real control plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_support import ControlPlane, State, new_agent, read_db, wasmedge_or_fail

# Declares 200 pages (12.5 MiB) of memory; the agents below allow 1 MiB (16 pages).
BIG_MINIMUM = b"".join(
    [
        b"\x00asm\x01\x00\x00\x00",
        b"\x01\x04\x01\x60\x00\x00",  # type: () -> ()
        b"\x03\x02\x01\x00",  # one function of that type
        b"\x05\x04\x01\x00\xc8\x01",  # memory: min 200 pages, no max
        b"\x07\x13\x02\x06_start\x00\x00\x06memory\x02\x00",  # exports _start, memory
        b"\x0a\x04\x01\x02\x00\x0b",  # _start: nothing
    ]
)


@pytest.mark.parametrize("runtime", ["wasmtime", "wasmedge"])
async def test_a_module_declaring_too_much_memory_is_rejected_before_the_release(
    control_plane: ControlPlane, tmp_path: Path, runtime: str
) -> None:
    if runtime == "wasmedge":
        wasmedge_or_fail()
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    agent: Any = await new_agent(cp, tmp_path / "edge-1", runtime=runtime, function_memory_mb=1)
    try:
        assert (await agent.sync_once()).kind == "applied"
        before = read_db(agent.data_dir / "edge.db")

        await cp.upload("big", "1.0.0", BIG_MINIMUM)
        outcome = await agent.sync_once()

        assert outcome.kind == "failed" and outcome.error is not None
        assert outcome.error.code == "MODULE_REJECTED"
        assert outcome.error.details["min_pages"] == 200
        assert read_db(agent.data_dir / "edge.db") == before
        assert "big" not in agent.runtime.functions()
        assert await cp.node_state(agent.node_id) == State.want(1)
        assert (await cp.history(agent.node_id))[0]["error_code"] == "MODULE_REJECTED"
    finally:
        await agent.close()
