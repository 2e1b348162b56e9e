"""Releases, fleet settings, pins and rollouts through the real CLI against real serve."""

from __future__ import annotations

from pathlib import Path

import wasmtime

from .support import Edgesync, Server
from .test_cli_e2e import HELLO_WAT


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def register(edgesync: Edgesync, server: Server, region: str) -> str:
    token = edgesync.run_json("token", "create", server=server)["token"]
    body = {"name": f"edge-{region}", "region": region, "enrollment_token": token}
    created = server.request("POST", "/api/v1/nodes/register", body)
    assert created.status == 201, created.body
    return str(created.json()["node_id"])


def test_release_fleet_pin_and_rollout_commands(
    edgesync: Edgesync, server: Server, tmp_path: Path
) -> None:
    module = tmp_path / "hello.wasm"
    module.write_bytes(bytes(wasmtime.wat2wasm(HELLO_WAT)))
    eu, us = register(edgesync, server, "eu"), register(edgesync, server, "us")
    edgesync.run_json("upload", "hello", "1.0", str(module), server=server)
    up = tmp_path / "001.sql"
    up.write_text("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);\n")
    down = tmp_path / "001.down.sql"
    down.write_text("DROP TABLE kv;\n")
    edgesync.run_json(
        "schema", "add", "--version", "1", "--up", str(up), "--down", str(down), server=server
    )
    off = edgesync.run_json("fleet", "set", "--auto-release", "off", server=server)
    assert off["auto_release"] is False
    assert edgesync.run_json("fleet", "show", server=server) == off
    made = edgesync.run_json(
        "upload", "hello", "2.0", str(module), "--requires-schema", "1", server=server
    )
    assert made["requires_schema"] == 1

    refused = edgesync.run(
        "release", "create", "--schema", "0", "--function", "hello@2.0", server=server, check=False
    )
    assert "(INCOMPATIBLE_RELEASE)" in one_error_line(refused.stderr)
    missing = edgesync.run(
        "release", "create", "--schema", "1", "--function", "nope@1", server=server, check=False
    )
    assert "(FUNCTION_NOT_FOUND)" in one_error_line(missing.stderr)
    release = edgesync.run_json(
        "release", "create", "--schema", "1", "--function", "hello@2.0", "--notes", "kv + v2",
        server=server,
    )  # fmt: skip
    listed = edgesync.run("release", "list", server=server).stdout
    assert "hello@2.0" in listed and "kv + v2" in listed
    shown = edgesync.run("release", "show", release["id"], server=server).stdout
    assert "~ hello 1.0 -> 2.0" in shown

    pinned = edgesync.run_json("nodes", "pin", us, release["id"], server=server)
    assert pinned["pinned_release_id"] == release["id"]
    unpinned = edgesync.run_json("nodes", "unpin", us, server=server)
    assert unpinned["pinned_release_id"] is None

    dry = edgesync.run_json(
        "rollout", "start", release["id"], "--selector", "region=eu", "--dry-run", server=server
    )
    assert dry["waves"][0]["node_ids"] == [eu]
    assert [a["type"] for a in dry["changes"][eu]][:1] == ["apply_schema"]
    started = edgesync.run_json(
        "rollout", "start", release["id"], "--selector", "region=eu", "--waves", "1,100%",
        "--max-failures", "10%", "--observe", "0", "--max-error-rate", "5%", server=server,
    )  # fmt: skip
    assert started["state"] == "running" and started["max_function_error_rate"] == 0.05
    status = edgesync.run("rollout", "status", started["id"], server=server).stdout
    assert "wave 1 [" in status and "running" in status
    busy = edgesync.run("rollout", "start", release["id"], server=server, check=False)
    assert "(NODE_IN_ROLLOUT)" in one_error_line(busy.stderr)
    assert edgesync.run_json("rollout", "pause", started["id"], server=server)["state"] == "paused"
    assert (
        edgesync.run_json("rollout", "resume", started["id"], server=server)["state"] == "running"
    )
    back = edgesync.run_json("rollout", "rollback", started["id"], server=server)
    assert back["state"] == "rolled_back"
    again = edgesync.run("rollout", "abort", started["id"], server=server, check=False)
    assert "(ROLLOUT_STATE_CONFLICT)" in one_error_line(again.stderr)
    assert started["id"] in edgesync.run("rollout", "list", server=server).stdout
