"""Releases that fail on a node: a migration its data refuses, a corrupted artifact.

In-process agents (driven step by step, or through ``Agent.run`` on a fake
clock) against a real control plane on loopback. A failed release leaves the
node exactly where it was — schema, data, bookkeeping and served functions —
and is reported; after five tries of the same plan the node rejects it and
stops asking until the plan changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agent_support import (
    ControlPlane,
    FakeClock,
    State,
    cached_modules,
    db_state,
    example,
    gateway_call,
    greeting,
    hello,
    local_gateway,
    metric,
    read_db,
    release_view,
    run_cli,
    stray_files,
    sync_until,
    write_db,
)

from agent.loop import Agent

RELEASE_1 = State.want(1, hello="1.0.0")
RELEASE_2 = State.want(2, hello="1.1.0")
# Applies on any empty kv table (the control plane checks that) but not on one
# holding duplicate values; it creates a table and inserts before it fails.
UNIQUE_MIGRATION = (
    "CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT NOT NULL);\n"
    "INSERT INTO audit (note) VALUES ('release 2');\n"
    "CREATE UNIQUE INDEX kv_v_unique ON kv (v);\n"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def edge_db(agent: Agent) -> Path:
    return agent.data_dir / "edge.db"


async def release_one(cp: ControlPlane, make_agent: Any, *names: str) -> list[Agent]:
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    await cp.upload("hello", "1.0.0", hello("v1"))
    agents = [await make_agent(name) for name in names]
    await sync_until(cp, agents, RELEASE_1)
    return agents


async def test_a_failing_migration_leaves_the_node_untouched_until_its_data_is_fixed(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    bad, good = await release_one(cp, make_agent, "edge-bad", "edge-good")
    write_db(edge_db(bad), "INSERT INTO kv VALUES ('a', 'same'), ('b', 'same')")
    write_db(edge_db(good), "INSERT INTO kv VALUES ('a', 'one'), ('b', 'two')")
    before = read_db(edge_db(bad))

    await cp.add_schema(2, UNIQUE_MIGRATION)
    v2 = await cp.upload("hello", "1.1.0", hello("v2"))
    async with local_gateway(bad.runtime) as gateway:
        assert (await good.sync_once()).kind == "applied"
        outcome = await bad.sync_once()
        assert outcome.kind == "failed"
        assert outcome.error is not None and outcome.error.code == "MIGRATION_FAILED"
        assert "UNIQUE" in outcome.error.details["sql_error"]

        # Byte for byte the old schema, data and bookkeeping; the old function served.
        assert read_db(edge_db(bad)) == before
        assert bad.runtime.functions()["hello"].version == "1.0.0"
        assert (await gateway_call(gateway, "hello", b"x"))[:2] == (200, greeting("v1", b"x"))
        code, out, err = await run_cli(
            "invoke", "--data-dir", str(bad.data_dir), "--runtime", "wasmtime", "hello", stdin=b"x"
        )
        assert (code, out.encode()) == (0, greeting("v1", b"x")), err
        # The new module was verified and kept for the retry; nothing else lingers.
        assert v2["sha256"] in cached_modules(bad.data_dir)
        assert stray_files(bad.data_dir) == []

        assert await cp.node_state(good.node_id) == RELEASE_2
        assert await cp.node_state(bad.node_id) == RELEASE_1
        failed = (await cp.history(bad.node_id))[0]
        assert failed["status"] == "failed"
        assert failed["error_code"] == "MIGRATION_FAILED"
        assert "UNIQUE" in failed["error_message"]
        assert failed["schemas_applied"] == 0 and failed["functions_added"] == 0

        # The operator fixes the data: the next try lands the release.
        write_db(edge_db(bad), "UPDATE kv SET v = 'other' WHERE k = 'b'")
        assert (await bad.sync_once()).kind == "applied"
        assert (await gateway_call(gateway, "hello", b"x"))[:2] == (200, greeting("v2", b"x"))
    assert await cp.node_state(bad.node_id) == RELEASE_2
    assert (await cp.history(bad.node_id))[0]["status"] == "success"
    assert db_state(edge_db(bad)) == RELEASE_2
    bad_view, good_view = release_view(edge_db(bad)), release_view(edge_db(good))
    assert bad_view["schema"] == good_view["schema"]
    assert bad_view["migrations"] == good_view["migrations"]
    assert bad_view["data"]["audit"] == [(1, "release 2")]
    assert cached_modules(bad.data_dir) == {v2["sha256"]}  # v1's module collected


async def test_a_plan_failing_five_times_is_rejected_until_the_plan_changes(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    clock = FakeClock()
    (agent,) = await release_one(cp, lambda name: make_agent(name, clock=clock), "edge-1")
    write_db(edge_db(agent), "INSERT INTO kv VALUES ('a', 'same'), ('b', 'same')")
    before = read_db(edge_db(agent))
    records_before = len(await cp.history(agent.node_id))
    await cp.add_schema(2, UNIQUE_MIGRATION)
    await cp.upload("hello", "1.1.0", hello("v2"))
    served_304 = metric(await cp.metrics(), "edgesync_plans_served_total", kind="not_modified")

    async def stop_after(count: int, seconds: float) -> None:
        if count == 8:
            agent.stop()

    clock.on_sleep = stop_after
    await agent.run()

    # Five tries on the retry schedule, then polls at the normal interval.
    assert clock.sleeps[:4] == [0.0, 1.0, 2.0, 4.0]
    assert all(0.18 <= delay <= 0.22 for delay in clock.sleeps[4:]), clock.sleeps
    history = await cp.history(agent.node_id)
    tries = history[: len(history) - records_before]
    assert [r["error_code"] for r in tries] == ["PLAN_REJECTED"] + ["MIGRATION_FAILED"] * 4
    assert all(r["status"] == "failed" for r in tries)
    assert "rejected after 5 tries" in tries[0]["error_message"]
    # The polls after the rejection were 304s: no new plan, no new sync record.
    served = metric(await cp.metrics(), "edgesync_plans_served_total", kind="not_modified")
    assert served - served_304 >= 3
    status = json.loads((agent.data_dir / "agent-status.json").read_text())
    assert status["last_outcome"] == "unchanged"
    assert status["pending_tries"] == {}
    (rejected,) = status["rejected_plans"]
    assert rejected["tries"] == 5
    assert rejected["target"]["schema_version"] == 2
    assert rejected["last_error"]["code"] == "MIGRATION_FAILED"
    assert read_db(edge_db(agent)) == before
    assert await cp.node_state(agent.node_id) == RELEASE_1
    for _ in range(3):
        assert (await agent.sync_once()).kind == "unchanged"
    assert len(await cp.history(agent.node_id)) == len(history)

    # A different plan (a new function on top) is tried again...
    await cp.upload("echo", "1.0.0", example("echo"))
    outcome = await agent.sync_once()
    assert outcome.kind == "failed" and outcome.error is not None
    assert outcome.error.code == "MIGRATION_FAILED"
    newest = await cp.history(agent.node_id)
    assert len(newest) == len(history) + 1
    assert newest[0]["error_code"] == "MIGRATION_FAILED"
    assert agent.next_delay(outcome) == 0.0  # its first try: the schedule starts over
    # ...and lands once the data allows it.
    write_db(edge_db(agent), "DELETE FROM kv WHERE k = 'b'")
    assert (await agent.sync_once()).kind == "applied"
    assert await cp.node_state(agent.node_id) == State.want(2, hello="1.1.0", echo="1.0.0")


async def test_a_corrupted_artifact_is_never_deployed(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    (agent,) = await release_one(cp, make_agent, "edge-1")
    v1_sha = agent.runtime.functions()["hello"].sha256
    v2 = await cp.upload("hello", "1.1.0", hello("v2"))
    # The stored object changes after upload: served bytes no longer match the sha256.
    impostor = hello("XX")  # a valid module that would run happily
    cp.artifact_file("hello", "1.1.0").write_bytes(impostor)
    before = read_db(edge_db(agent))

    async with local_gateway(agent.runtime) as gateway:
        for _ in range(2):
            outcome = await agent.sync_once()
            assert outcome.kind == "failed" and outcome.error is not None
            assert outcome.error.code == "HASH_MISMATCH"
            assert outcome.error.details == {"expected": v2["sha256"], "actual": sha256(impostor)}
            assert read_db(edge_db(agent)) == before
            assert agent.runtime.functions()["hello"].version == "1.0.0"
            assert (await gateway_call(gateway, "hello"))[:2] == (200, greeting("v1"))
            # Nothing unverified anywhere under DIR: no module, no partial file, no compile.
            assert cached_modules(agent.data_dir) == {v1_sha}
            assert stray_files(agent.data_dir) == []
            compiled = " ".join(p.name for p in (agent.data_dir / "compiled").iterdir())
            assert sha256(impostor) not in compiled and v2["sha256"] not in compiled
        history = await cp.history(agent.node_id)
        assert [r["error_code"] for r in history[:2]] == ["HASH_MISMATCH"] * 2
        assert await cp.node_state(agent.node_id) == RELEASE_1

        # The store is repaired: the next try deploys the right bytes.
        cp.artifact_file("hello", "1.1.0").write_bytes(hello("v2"))
        assert (await agent.sync_once()).kind == "applied"
        assert (await gateway_call(gateway, "hello"))[:2] == (200, greeting("v2"))
    assert cached_modules(agent.data_dir) == {v2["sha256"]}
    assert await cp.node_state(agent.node_id) == State.want(1, hello="1.1.0")


async def test_tries_count_per_target_and_a_newer_target_starts_afresh(
    control_plane: ControlPlane, make_agent: Any
) -> None:
    cp = control_plane
    (agent,) = await release_one(cp, make_agent, "edge-1")
    write_db(edge_db(agent), "INSERT INTO kv VALUES ('a', 'same'), ('b', 'same')")
    await cp.add_schema(2, UNIQUE_MIGRATION)
    await cp.upload("hello", "1.1.0", hello("v2"))

    async def try_once() -> tuple[str, float]:
        outcome = await agent.sync_once()
        return outcome.kind, agent.next_delay(outcome)

    assert [await try_once() for _ in range(2)] == [("failed", 0.0), ("failed", 1.0)]
    # The target changes after two tries: the new one gets five tries of its own.
    await cp.upload("echo", "1.0.0", example("echo"))
    tries = [await try_once() for _ in range(5)]
    assert tries[:4] == [("failed", 0.0), ("failed", 1.0), ("failed", 2.0), ("failed", 4.0)]
    assert tries[4][0] == "rejected"
    status = json.loads((agent.data_dir / "agent-status.json").read_text())
    (rejected,) = status["rejected_plans"]
    assert {f["name"] for f in rejected["target"]["functions"]} == {"hello", "echo"}
    assert (await agent.sync_once()).kind == "unchanged"
    codes = [r["error_code"] for r in (await cp.history(agent.node_id))[:7]]
    assert codes == ["PLAN_REJECTED"] + ["MIGRATION_FAILED"] * 6
