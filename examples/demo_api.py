#!/usr/bin/env python3
"""edgesync end to end, from one script: ``make demo``.

Until the edge agent exists, this plays both sides against a real control plane:

* it starts ``edgesync serve`` on an ephemeral port with a throwaway data dir;
* the *operator* uses the real CLI: ``edgesync token create``, ``schema add``, ``upload``;
* two *nodes* speak raw HTTP exactly as an agent would: register with the
  enrollment token, fetch their plan, download each module from its signed URL,
  check its SHA-256, apply the migrations to their own SQLite database in one
  transaction, run the function, ack, and get 304 on the next poll;
* a release v2 (function and schema together) is published and rolled out the same way;
* a summary shows ``edgesync nodes list`` and every node's sync history.

It ends by itself, stops the server and removes its data.

    python examples/demo_api.py                                   # the venv's edgesync
    python examples/demo_api.py --edgesync "python3 dist/edgesync.pyz"   # the zipapp
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
STARTUP_TIMEOUT = 60.0  # a zipapp's first run extracts itself first
SUBPROCESS_TIMEOUT = 120.0


class DemoError(Exception):
    pass


# -- output ---------------------------------------------------------------------------


def say(actor: str, text: str) -> None:
    print(f"  {actor:<9} {text}", flush=True)


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def short(digest: str) -> str:
    return digest[:12] + "…"


# -- the control plane ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    command: list[str]
    data_dir: Path
    admin_token: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 5) -> None:
        """Start on a free port; pick another if it was taken in between."""
        for _ in range(attempts):
            self.port = free_port()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        *self.command,
                        "serve",
                        *("--host", "127.0.0.1"),
                        *("--port", str(self.port)),
                        *("--data-dir", str(self.data_dir)),
                        "--no-access-log",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "EDGESYNC_ADMIN_TOKEN": self.admin_token},
                )
            if self._wait_healthy():
                return
            if "address already in use" not in self.log().lower():
                raise DemoError(f"edgesync serve did not start:\n{self.log()}")
        raise DemoError("no free port found for edgesync serve")

    def _wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                status, _, _ = http_request("GET", f"{self.url}/healthz", timeout=2)
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise DemoError(f"edgesync serve not healthy after {STARTUP_TIMEOUT:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- HTTP as an agent speaks it -------------------------------------------------------


def http_request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout
    )
    payload = json.dumps(body).encode() if body is not None else None
    sent = dict(headers or {})
    if payload is not None:
        sent["Content-Type"] = "application/json"
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def expect(status: int, want: int, raw: bytes, what: str) -> Any:
    if status != want:
        raise DemoError(f"{what}: expected HTTP {want}, got {status}: {raw[:300]!r}")
    return json.loads(raw) if raw else None


# -- the operator's CLI ---------------------------------------------------------------


class Operator:
    def __init__(self, command: list[str], server: Server) -> None:
        self.command = command
        self.env = {
            **os.environ,
            "EDGESYNC_SERVER": server.url,
            "EDGESYNC_TOKEN": server.admin_token,
        }

    def run(self, *args: str, show: bool = True) -> str:
        if show:
            say("operator", "$ edgesync " + " ".join(shlex.quote(a) for a in args))
        result = subprocess.run(
            [*self.command, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
        if result.returncode != 0:
            raise DemoError(f"edgesync {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def run_json(self, *args: str) -> Any:
        return json.loads(self.run(*args))


# -- a node, played by hand -----------------------------------------------------------


@dataclass
class Node:
    name: str
    server: Server
    home: Path
    node_id: str = ""
    token: str = ""
    etag: str | None = None
    schema_version: int = 0
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> ref
    modules: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes

    @property
    def db_path(self) -> Path:
        return self.home / "edge.db"

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[Any, ...]:
        auth = {"Authorization": f"Bearer {self.token}", **headers}
        return http_request(method, f"{self.server.url}{path}", body, auth)

    def register(self, enrollment_token: str) -> None:
        body = {
            "name": self.name,
            "region": "eu-west",
            "labels": {"site": self.name.replace("edge-", "store-")},
            "enrollment_token": enrollment_token,
        }
        status, _, raw = http_request("POST", f"{self.server.url}/api/v1/nodes/register", body)
        answer = expect(status, 201, raw, "register")
        self.node_id, self.token = answer["node_id"], answer["token"]
        say(self.name, f"POST /api/v1/nodes/register -> 201, node id {self.node_id}")

    def poll(self) -> dict[str, Any] | None:
        """GET the plan with If-None-Match; None on 304."""
        headers = {"If-None-Match": self.etag} if self.etag else {}
        status, response_headers, raw = self.call(
            "GET", f"/api/v1/nodes/{self.node_id}/sync", **headers
        )
        sent = f" (If-None-Match {self.etag})" if self.etag else ""
        if status == 304:
            say(self.name, f"GET  /sync{sent} -> 304 Not Modified")
            return None
        plan: dict[str, Any] = expect(status, 200, raw, "plan")
        if response_headers.get("etag") != plan["etag"]:
            raise DemoError("the ETag header and the plan's etag differ")
        self.etag = plan["etag"]
        actions = ", ".join(describe(action) for action in plan["actions"]) or "nothing to do"
        say(self.name, f"GET  /sync{sent} -> 200, ETag {plan['etag']}: {actions}")
        return plan

    def apply(self, plan: dict[str, Any]) -> None:
        """What the agent will do: fetch and verify first, then one transaction, then ack."""
        fetched: dict[str, bytes] = {}
        for action in plan["actions"]:
            if action["type"] == "deploy_function":
                fetched[action["name"]] = self.download(action)
        self.migrate([a for a in plan["actions"] if a["type"] == "apply_schema"])
        for action in plan["actions"]:
            if action["type"] == "deploy_function":
                self.modules[action["sha256"]] = fetched[action["name"]]
                self.functions[action["name"]] = {
                    "name": action["name"],
                    "version": action["version"],
                    "sha256": action["sha256"],
                }
            elif action["type"] == "remove_function":
                current = self.functions.get(action["name"])
                if current and current["version"] == action["version"]:
                    del self.functions[action["name"]]
        for ref in self.functions.values():
            output = run_wasi(self.modules[ref["sha256"]], self.name.encode())
            say(self.name, f"runs {ref['name']} {ref['version']}: {output.strip()!r}")
        self.ack(plan["sync_id"])

    def download(self, action: dict[str, Any]) -> bytes:
        # The signed URL is the credential: no Authorization header.
        status, _, module = http_request("GET", action["download_url"])
        if status != 200:
            raise DemoError(f"download of {action['name']}: HTTP {status}")
        actual = hashlib.sha256(module).hexdigest()
        if actual != action["sha256"] or len(module) != action["size_bytes"]:
            raise DemoError(f"{action['name']}: sha256 {actual} != {action['sha256']}")
        say(
            self.name,
            f"GET  signed download_url (no token) -> 200, {len(module)} bytes, "
            f"sha256 {short(actual)} verified",
        )
        return module

    def migrate(self, migrations: list[dict[str, Any]]) -> None:
        if not migrations:
            return
        sys.path.insert(0, str(HERE.parent))  # edgesync.sqlscript, from this checkout
        from edgesync.sqlscript import split_statements

        connection = sqlite3.connect(self.db_path, isolation_level=None)
        try:
            connection.execute("BEGIN")
            for migration in migrations:
                for statement in split_statements(migration["up_sql"]):
                    connection.execute(statement)
            connection.execute("COMMIT")
        except sqlite3.Error:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()
        self.schema_version = migrations[-1]["version"]
        tables = sqlite3.connect(self.db_path).execute(
            "SELECT group_concat(name, ', ') FROM sqlite_master WHERE type IN ('table', 'index')"
        )
        versions = ", ".join(f"v{m['version']}" for m in migrations)
        say(self.name, f"applied schema {versions} in one transaction ({tables.fetchone()[0]})")

    def ack(self, sync_id: str) -> None:
        state = {
            "schema_version": self.schema_version,
            "functions": sorted(self.functions.values(), key=lambda ref: ref["name"]),
        }
        body = {"sync_id": sync_id, "status": "success", "state": state, "error": None}
        status, _, raw = self.call("POST", f"/api/v1/nodes/{self.node_id}/sync/ack", body)
        expect(status, 200, raw, "ack")
        say(self.name, "POST /sync/ack success -> 200 recorded")

    def history(self, admin_token: str) -> list[dict[str, Any]]:
        status, _, raw = http_request(
            "GET",
            f"{self.server.url}/api/v1/nodes/{self.node_id}/sync/history",
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        records: list[dict[str, Any]] = expect(status, 200, raw, "history")["records"]
        return records


def describe(action: dict[str, Any]) -> str:
    if action["type"] == "apply_schema":
        return f"apply_schema v{action['version']}"
    if action["type"] == "deploy_function":
        return f"deploy {action['name']} {action['version']}"
    return f"remove {action['name']} {action['version']}"


def run_wasi(module: bytes, stdin: bytes) -> str:
    """Run a WASI command module the way the agent's gateway will (files for stdio)."""
    import wasmtime

    with tempfile.TemporaryDirectory() as tmp:
        stdin_path, stdout_path = Path(tmp, "stdin"), Path(tmp, "stdout")
        stdin_path.write_bytes(stdin)
        engine = wasmtime.Engine()
        wasi = wasmtime.WasiConfig()
        wasi.stdin_file = str(stdin_path)
        wasi.stdout_file = str(stdout_path)
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, wasmtime.Module(engine, module))
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)
        return stdout_path.read_text()


# -- the story ------------------------------------------------------------------------


def build_module(work: Path, version: int) -> Path:
    import wasmtime

    text = (HERE / "hello.wat").read_text()
    greeting = "hello from edgesync v1: "
    if greeting not in text:
        raise DemoError("examples/hello.wat no longer holds the v1 greeting")
    path = work / f"hello-v{version}.wasm"
    path.write_bytes(wasmtime.wat2wasm(text.replace(greeting, f"hello from edgesync v{version}: ")))
    return path


def roll_out(nodes: list[Node]) -> None:
    for node in nodes:
        plan = node.poll()
        if plan is not None and plan["actions"]:
            node.apply(plan)


def settle(nodes: list[Node]) -> None:
    """After an ack the plan is empty with a new ETag; one more poll shows 304."""
    print("  (an ack changes the node's state, so its next plan has a new ETag)")
    for node in nodes:
        node.poll()
        node.poll()


def summary(operator: Operator, nodes: list[Node], admin_token: str) -> None:
    heading("Summary: edgesync nodes list")
    print(operator.run("nodes", "list", show=False).rstrip())
    heading("Summary: sync history (newest first)")
    columns = ("node", "started_at", "type", "status", "+fn", "-fn", "schemas")
    rows = []
    for node in nodes:
        for record in node.history(admin_token):
            rows.append(
                (
                    node.name,
                    record["started_at"],
                    record["sync_type"],
                    record["status"],
                    str(record["functions_added"]),
                    str(record["functions_removed"]),
                    str(record["schemas_applied"]),
                )
            )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def demo(command: list[str], work: Path) -> None:
    admin_token = secrets.token_urlsafe(24)
    server = Server(command, work / "data", admin_token)
    heading(f"Starting the control plane: {' '.join(command)} serve")
    started = time.monotonic()
    try:
        server.start()
        say("server", f"healthy at {server.url} after {time.monotonic() - started:.1f} s")
        operator = Operator(command, server)

        heading("Release 1: schema v1 + hello 1.0.0")
        enrollment = operator.run_json("token", "create", "--max-uses", "2", "--ttl", "600")
        say("operator", f"-> enrollment token for 2 nodes, expires {enrollment['expires_at']}")
        operator.run_json(
            "schema", "add", "--version", "1", "--description", "greetings table",
            "--up", str(HERE / "schema" / "001_greetings.sql"),
        )  # fmt: skip
        v1 = operator.run_json("upload", "hello", "1.0.0", str(build_module(work, 1)))
        say("operator", f"-> hello 1.0.0, {v1['size_bytes']} bytes, sha256 {short(v1['sha256'])}")

        heading("Two nodes enroll and sync")
        nodes = [Node(name, server, work / name) for name in ("edge-1", "edge-2")]
        for node in nodes:
            node.home.mkdir()
            node.register(enrollment["token"])
        roll_out(nodes)
        settle(nodes)

        heading("Release 2: schema v2 + hello 2.0.0, delivered together")
        operator.run_json(
            "schema", "add", "--version", "2", "--description", "greeting language",
            "--up", str(HERE / "schema" / "002_greetings_lang.sql"),
        )  # fmt: skip
        v2 = operator.run_json("upload", "hello", "2.0.0", str(build_module(work, 2)))
        say("operator", f"-> hello 2.0.0, {v2['size_bytes']} bytes, sha256 {short(v2['sha256'])}")
        roll_out(nodes)
        settle(nodes)

        summary(operator, nodes, admin_token)
    except BaseException:
        log = server.log()
        if log:
            print(f"\n-- edgesync serve log --\n{log[-4000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()
    heading(f"Done in {time.monotonic() - started:.1f} s; server stopped, data removed")


def main() -> int:
    parser = argparse.ArgumentParser(description="edgesync API demo")
    parser.add_argument(
        "--edgesync",
        default=f"{shlex.quote(sys.executable)} -m edgesync",
        help='how to run edgesync (default: this python\'s; e.g. "python3 dist/edgesync.pyz")',
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesync-demo-") as tmp:
        try:
            demo(shlex.split(args.edgesync), Path(tmp))
        except DemoError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
