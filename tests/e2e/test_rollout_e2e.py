"""A canary rollout end to end, every part a real process: ``edgesync serve`` (one on
SQLite; two replicas on PostgreSQL), two ``edgesync agent`` with their gateways, and
the operator's CLI. The canary's failing function is counted by its gateway, reported
in its heartbeats, stops the rollout and brings the canary back across a migration
(its down_sql); every serve is restarted in the middle; the other node is never touched."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import wasmtime

from .conftest import ADMIN_TOKEN
from .support import Edgesync, Server, clean_env, free_port, http_request
from .test_cli_e2e import HELLO_WAT

T = TypeVar("T")
WAIT = 60.0  # a bound on waiting, never an assertion about speed
TRAP_WAT = '(module (memory (export "memory") 1) (func (export "_start") unreachable))'


def wait_for(what: str, check: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + WAIT
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class Replica:
    """``edgesync serve`` on a fixed port (so agents find it again after a restart)."""

    def __init__(self, edgesync: Edgesync, data_dir: Path, log: Path, env: dict[str, str]) -> None:
        self.edgesync, self.data_dir, self.log_path, self.env = edgesync, data_dir, log, env
        self.port = free_port()
        self.server: Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [*self.edgesync.argv, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir), "--rollout-interval", "0.2"]
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.server = Server(self.url, ADMIN_TOKEN, self.data_dir, process, self.log_path)

        def healthy() -> bool | None:
            assert self.server is not None
            if process.poll() is not None:
                pytest.fail(f"serve exited:\n{self.server.log()}")
            try:
                return True if self.server.request("GET", "/healthz").status == 200 else None
            except OSError:
                return None

        wait_for("serve to be healthy", healthy)

    def stop(self) -> None:
        if self.server is not None:
            assert self.server.stop() == 0, self.server.log()


@pytest.fixture
def replicas(
    installed_edgesync: Edgesync, tmp_path: Path, database_kind: str, request: Any
) -> Iterator[list[Replica]]:
    env = {**installed_edgesync.env, "EDGESYNC_ADMIN_TOKEN": ADMIN_TOKEN}
    count = 1
    if database_kind != "sqlite":
        env["DATABASE_URL"] = request.getfixturevalue("postgres").new_url(pool_max="4")
        count = 2  # one data dir (the folder artifact store), as k3s mounts one volume
    running = [
        Replica(installed_edgesync, tmp_path / "data", tmp_path / f"serve-{i}.log", env)
        for i in range(count)
    ]
    try:
        for replica in running:
            replica.start()
        yield running
    finally:
        for replica in running:
            replica.stop()


class Agent:
    def __init__(self, edgesync: Edgesync, home: Path, server: str, token: str) -> None:
        self.home, self.port = home, free_port()
        self.log_path = home.parent / f"{home.name}.log"
        argv = [*edgesync.argv, "agent", "--server", server, "--data-dir", str(home)]
        argv += ["--enrollment-token", token, "--poll-interval", "0.2", "--runtime", "wasmtime"]
        argv += ["--gateway", f"127.0.0.1:{self.port}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(f"{home.name}'s gateway", lambda: self._up() or None)
        self.node_id = str(__import__("json").loads((home / "node.json").read_text())["node_id"])

    def _up(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"agent exited:\n{self.log_path.read_text()}")
        try:
            return http_request("GET", f"http://127.0.0.1:{self.port}/healthz").status == 200
        except OSError:
            return False

    def call(self, name: str) -> int:
        return http_request("POST", f"http://127.0.0.1:{self.port}/functions/{name}", b"x").status

    def tables(self) -> set[str]:
        connection = sqlite3.connect(f"file:{self.home / 'edge.db'}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {row[0] for row in rows if not row[0].startswith(("_", "sqlite"))}
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=WAIT)


def test_canary_error_gate_rolls_back_across_a_migration_through_a_serve_restart(
    installed_edgesync: Edgesync, replicas: list[Replica], tmp_path: Path
) -> None:
    cli = Edgesync(installed_edgesync.kind, installed_edgesync.argv, installed_edgesync.env)
    first = replicas[0].server
    assert first is not None

    def run(*args: str) -> Any:
        return cli.run_json(*args, server=first)

    def node(node_id: str) -> dict[str, Any]:
        return {n["id"]: n for n in run("nodes", "list", "--json")}[node_id]

    def at(agent: Agent, schema: int, version: str) -> Callable[[], bool | None]:
        def check() -> bool | None:
            seen = node(agent.node_id)
            functions = [(f["name"], f["version"]) for f in seen["functions"]]
            return (
                seen["current_schema_version"] == schema and functions == [("hello", version)]
            ) or None

        return check

    token = run("token", "create", "--max-uses", "2")["token"]
    agents = [
        Agent(installed_edgesync, tmp_path / f"edge-{i}", replicas[i % len(replicas)].url, token)
        for i in range(2)
    ]
    try:
        sql = tmp_path / "sql"
        sql.mkdir()
        for name, text in {
            "1.up": "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);",
            "1.down": "DROP TABLE kv;",
            "2.up": "CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT);",
            "2.down": "DROP TABLE audit;",
        }.items():
            (sql / f"{name}.sql").write_text(text)
        hello1, trap = tmp_path / "hello1.wasm", tmp_path / "trap.wasm"
        hello1.write_bytes(bytes(wasmtime.wat2wasm(HELLO_WAT)))
        trap.write_bytes(bytes(wasmtime.wat2wasm(TRAP_WAT)))
        run(
            "schema",
            "add",
            "--version",
            "1",
            "--up",
            str(sql / "1.up.sql"),
            "--down",
            str(sql / "1.down.sql"),
        )
        run("upload", "hello", "1.0", str(hello1))
        for agent in agents:  # auto-release: the v1 behaviour
            wait_for("v1 everywhere", at(agent, 1, "1.0"))
        canary, other = sorted(agents, key=lambda a: a.node_id)
        conn = sqlite3.connect(canary.home / "edge.db", timeout=10)
        with conn:
            conn.execute("INSERT INTO kv (k, v) VALUES ('keep', 'me')")
        conn.close()

        run("fleet", "set", "--auto-release", "off")
        syncs_before = len(
            cli.run_json("nodes", "show", other.node_id, "--history", server=first)["sync_history"]
        )
        run(
            "schema",
            "add",
            "--version",
            "2",
            "--up",
            str(sql / "2.up.sql"),
            "--down",
            str(sql / "2.down.sql"),
        )
        run("upload", "hello", "2.0", str(trap), "--requires-schema", "2")
        release = run("release", "create", "--schema", "2", "--function", "hello@2.0")
        rollout = run(
            "rollout", "start", release["id"], "--waves", "1,100%",
            "--observe", "600", "--max-error-rate", "5%",
        )  # fmt: skip
        wait_for("the canary on release 2", at(canary, 2, "2.0"))
        assert "audit" in canary.tables()

        for replica in replicas:  # every replica restarts mid-rollout
            replica.stop()
        for replica in replicas:
            replica.start()
        first = replicas[0].server
        assert run("rollout", "status", rollout["id"], "--json")["state"] == "running"

        assert [canary.call("hello") for _ in range(3)] == [502, 502, 502]
        wait_for(
            "the rollout to roll back",
            lambda: (
                run("rollout", "status", rollout["id"], "--json")["state"] == "rolled_back" or None
            ),
        )
        wait_for("the canary back on release 1", at(canary, 1, "1.0"))
        assert canary.tables() == {"kv"}
        conn = sqlite3.connect(f"file:{canary.home / 'edge.db'}?mode=ro", uri=True)
        assert conn.execute("SELECT k, v FROM kv").fetchall() == [("keep", "me")]
        conn.close()
        assert canary.call("hello") == 200
        assert other.tables() == {"kv"}
        history = cli.run_json("nodes", "show", other.node_id, "--history", server=first)
        assert len(history["sync_history"]) == syncs_before  # no sync since the rollout began
    finally:
        for agent in agents:
            agent.stop()
