"""The agent's command line: ``agent --once``, ``agent status`` and ``invoke``.

The real ``edgesync`` executable, run as asyncio subprocesses (the control
plane on loopback lives in the test's event loop).
"""

from __future__ import annotations

import json
from pathlib import Path

from agent_support import (
    ControlPlane,
    State,
    example,
    free_port,
    greeting,
    hello,
    run_cli,
    write_db,
)


async def once(cp_url: str, data_dir: Path, *extra: str) -> tuple[int, str, str]:
    return await run_cli(
        "agent",
        *("--server", cp_url, "--data-dir", str(data_dir)),
        *("--runtime", "wasmtime", "--no-gateway", "--once"),
        *extra,
    )


async def test_once_status_and_invoke(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    hello_v1 = await cp.upload("hello", "1.0.0", hello("v1"))
    await cp.upload("echo", "1.0.0", example("echo"))
    await cp.upload("exit3", "1.0.0", example("exit3"))
    data_dir = tmp_path / "edge-cli"
    token = await cp.enrollment_token()

    # --once: enroll, converge, exit 0.
    code, out, err = await once(cp.url, data_dir, "--enrollment-token", token, "--name", "cli")
    assert code == 0, f"{out}\n{err}"
    node_id = json.loads((data_dir / "node.json").read_text())["node_id"]
    want = State.want(1, hello="1.0.0", echo="1.0.0", exit3="1.0.0")
    assert await cp.node_state(node_id) == want
    # Converged already: --once still exits 0.
    code, out, err = await once(cp.url, data_dir)
    assert code == 0, f"{out}\n{err}"

    # agent status: JSON with the node id and the state; never the token.
    code, out, err = await run_cli("agent", "--data-dir", str(data_dir), "status")
    assert code == 0, err
    status = json.loads(out)
    assert status["node_id"] == node_id
    assert status["name"] == "cli"
    assert status["server"] == cp.url
    assert State.of(status["state"]["schema_version"], status["state"]["functions"]) == want
    assert {"name": "hello", "version": "1.0.0", "sha256": hello_v1["sha256"]} in status["state"][
        "functions"
    ]
    assert status["agent"]["last_outcome"] in ("converged", "applied")
    stored_token = json.loads((data_dir / "node.json").read_text())["token"]
    assert stored_token not in out

    # invoke: stdin in, the function's stdout out; failures exit 1 with the code.
    code, out, err = await run_cli(
        "invoke", "--data-dir", str(data_dir), "--runtime", "wasmtime", "hello", stdin=b"cli"
    )
    assert (code, out.encode()) == (0, greeting("v1", b"cli")), err
    code, out, err = await run_cli(
        "invoke", "--data-dir", str(data_dir), "--runtime", "wasmtime", "echo", stdin=b"\x00abc"
    )
    assert (code, out) == (0, "\x00abc"), err
    code, out, err = await run_cli(
        "invoke", "--data-dir", str(data_dir), "--runtime", "wasmtime", "exit3"
    )
    assert code == 1 and "FUNCTION_EXIT" in err, (code, out, err)
    code, out, err = await run_cli(
        "invoke", "--data-dir", str(data_dir), "--runtime", "wasmtime", "nope"
    )
    assert code == 1 and "FUNCTION_NOT_FOUND" in err, (code, out, err)


async def test_once_fails_with_a_message_when_it_cannot_converge(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    await cp.add_schema(1, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    await cp.upload("hello", "1.0.0", hello("v1"))
    data_dir = tmp_path / "edge-1"
    nowhere = f"http://127.0.0.1:{free_port()}"

    # Not enrolled, no token.
    code, out, err = await once(cp.url, data_dir)
    assert code != 0
    assert "--enrollment-token" in out + err

    # Enrollment against a server that is not there.
    code, out, err = await once(nowhere, data_dir, "--enrollment-token", "est_whatever")
    assert code != 0
    assert "error" in (out + err).lower()
    assert not (data_dir / "node.json").exists()

    # Enrolled, then pointed at a wrong server: the sync fails and says why.
    code, out, err = await once(cp.url, data_dir, "--enrollment-token", await cp.enrollment_token())
    assert code == 0, f"{out}\n{err}"
    code, out, err = await once(nowhere, data_dir)
    assert code == 1
    # In the operator CLI's words and form, never aiohttp's ("Cannot connect to host …").
    last = err.strip().splitlines()[-1]
    assert last == f"error: cannot reach {nowhere}: connection refused (UNREACHABLE)", err
    assert "ssl:default" not in err and "Cannot connect" not in err and out == ""

    # A release that fails on this node: exit 1 with the error.
    write_db(data_dir / "edge.db", "INSERT INTO kv VALUES ('a', 'same'), ('b', 'same')")
    await cp.add_schema(2, "CREATE UNIQUE INDEX kv_v ON kv (v)")
    code, out, err = await once(cp.url, data_dir)
    assert code == 1 and out == ""
    assert "UNIQUE constraint failed" in err and "(MIGRATION_FAILED)" in err
