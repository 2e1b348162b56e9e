"""The whole path through real processes: ``edgesync serve``, the operator CLI, raw HTTP.

Each test runs against the installed console script and against dist/edgesync.pyz
(see conftest.py). The node side is played over raw HTTP exactly as docs/protocol.md
tells an agent to speak.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import wasmtime

from edgesync import __version__

from .support import Edgesync, Server, http_request, multipart

# A WASI command module: `_start` writes "hi\n" to stdout.
HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
SCHEMA_V1 = "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);\nCREATE INDEX kv_v ON kv (v);\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_envelope(body: Any, code: str) -> None:
    """The error body of docs/protocol.md, with the expected code."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"code", "message", "details", "retryable"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["retryable"] is False


def test_help_and_version(edgesync: Edgesync) -> None:
    assert edgesync.run("--version").stdout.strip() == f"edgesync, version {__version__}"
    listing = edgesync.run("--help").stdout
    for command in ("serve", "upload", "functions", "schema", "nodes", "token"):
        assert command in listing


def test_release_reaches_a_node(edgesync: Edgesync, server: Server, tmp_path: Path) -> None:
    # The operator publishes a release with the real CLI.
    enrollment = edgesync.run_json(
        "token", "create", "--max-uses", "1", "--ttl", "600", server=server
    )
    assert enrollment["max_uses"] == 1 and enrollment["token"]

    up_sql = tmp_path / "001_kv.sql"
    up_sql.write_text(SCHEMA_V1)
    migration = edgesync.run_json(
        "schema", "add", "--version", "1", "--up", str(up_sql), "--description", "kv",
        server=server,
    )  # fmt: skip
    assert migration["version"] == 1

    module = bytes(wasmtime.wat2wasm(HELLO_WAT))
    module_path = tmp_path / "hello.wasm"
    module_path.write_bytes(module)
    function = edgesync.run_json("upload", "hello", "1.0.0", str(module_path), server=server)
    assert function["name"] == "hello" and function["version"] == "1.0.0"
    assert function["sha256"] == sha256(module)
    assert function["size_bytes"] == len(module)

    # A node enrolls with the token, as an agent would.
    registered = server.request(
        "POST",
        "/api/v1/nodes/register",
        {
            "name": "edge-e2e",
            "region": "eu",
            "labels": {"rack": "a1"},
            "enrollment_token": enrollment["token"],
        },
    )
    assert registered.status == 201, registered.body
    node_id, node_token = registered.json()["node_id"], registered.json()["token"]
    sync_path = f"/api/v1/nodes/{node_id}/sync"

    # Its plan: the migration, then the function.
    fetched = server.request("GET", sync_path, token=node_token)
    assert fetched.status == 200, fetched.body
    plan = fetched.json()
    assert fetched.headers["etag"] == plan["etag"]
    assert plan["sync_id"]
    assert plan["target"] == {
        "schema_version": 1,
        "functions": [{"name": "hello", "version": "1.0.0", "sha256": sha256(module)}],
    }
    assert [action["type"] for action in plan["actions"]] == ["apply_schema", "deploy_function"]
    apply_schema, deploy = plan["actions"]
    assert apply_schema["version"] == 1 and apply_schema["up_sql"] == SCHEMA_V1
    assert deploy["name"] == "hello" and deploy["version"] == "1.0.0"
    assert deploy["sha256"] == sha256(module) and deploy["size_bytes"] == len(module)

    # The signed URL alone is the credential; the bytes are the ones uploaded.
    download = http_request("GET", deploy["download_url"])
    assert download.status == 200
    assert download.headers["content-type"].startswith("application/wasm")
    assert sha256(download.body) == deploy["sha256"]
    tampered = deploy["download_url"][:-1] + ("0" if deploy["download_url"][-1] != "0" else "1")
    refused = http_request("GET", tampered)
    assert refused.status == 403
    assert_envelope(refused.json(), "URL_EXPIRED_OR_INVALID")

    # Polling again before applying: nothing changed, 304 with the same ETag.
    unchanged = server.request(
        "GET", sync_path, token=node_token, headers={"If-None-Match": plan["etag"]}
    )
    assert unchanged.status == 304
    assert unchanged.headers["etag"] == plan["etag"] and unchanged.body == b""

    # Applied: ack success (twice: acks are idempotent).
    ack = {"sync_id": plan["sync_id"], "status": "success", "state": plan["target"], "error": None}
    for _ in range(2):
        acked = server.request("POST", f"{sync_path}/ack", ack, token=node_token)
        assert acked.status == 200, acked.body
        assert acked.json()["recorded"] is True

    # The ack changed the node's state: an empty plan under a new ETag, then 304.
    settled = server.request(
        "GET", sync_path, token=node_token, headers={"If-None-Match": plan["etag"]}
    )
    assert settled.status == 200, settled.body
    empty = settled.json()
    assert empty["actions"] == [] and empty["sync_id"] is None
    assert empty["etag"] != plan["etag"]
    quiet = server.request(
        "GET", sync_path, token=node_token, headers={"If-None-Match": empty["etag"]}
    )
    assert quiet.status == 304

    # The operator sees where the fleet is.
    [node] = edgesync.run_json("nodes", "list", "--json", server=server)
    assert node["id"] == node_id and node["name"] == "edge-e2e"
    assert node["current_schema_version"] == 1
    assert node["functions"] == plan["target"]["functions"]
    shown = edgesync.run_json("nodes", "show", node_id, "--history", server=server)
    [record] = shown["sync_history"]
    assert record["status"] == "success" and record["sync_type"] == "full"
    assert (record["functions_added"], record["schemas_applied"]) == (1, 1)
    listed = edgesync.run("functions", "list", server=server).stdout
    assert "hello" in listed and "1.0.0" in listed
    [schema_row] = edgesync.run_json("schema", "list", "--json", server=server)
    assert schema_row["version"] == 1


def test_bad_upload_is_refused_with_an_envelope(
    edgesync: Edgesync, server: Server, tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"this is not WebAssembly")

    # The CLI: non-zero exit, one line on stderr with the code, nothing on stdout.
    result = edgesync.run("upload", "hello", "1.0.0", str(bogus), server=server, check=False)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "(INVALID_WASM)" in lines[0]

    bad_name = edgesync.run("upload", "Not A Name", "1.0", str(bogus), server=server, check=False)
    assert bad_name.returncode != 0
    assert bad_name.stderr.strip().splitlines() == [bad_name.stderr.strip()]
    assert "(INVALID_NAME)" in bad_name.stderr

    wrong_token = edgesync.run(
        "functions", "list", "--server", server.url, "--token", "not-the-admin-token",
        check=False,
    )  # fmt: skip
    assert wrong_token.returncode != 0 and "(UNAUTHORIZED)" in wrong_token.stderr
    assert "Traceback" not in result.stderr + bad_name.stderr + wrong_token.stderr

    # The same refusal over raw HTTP: 400 and the error envelope.
    body, content_type = multipart({"name": "hello", "version": "1.0.0"}, bogus.read_bytes())
    response = server.request(
        "POST",
        "/api/v1/functions",
        body,
        token=server.admin_token,
        headers={"Content-Type": content_type},
    )
    assert response.status == 400
    assert response.headers["content-type"].startswith("application/json")
    assert_envelope(response.json(), "INVALID_WASM")

    # Nothing was stored.
    assert edgesync.run_json("functions", "list", "--json", server=server) == []
