"""Hostile migrations against a real ``edgesync serve`` (the installed package and the
zipapp): the check runs in a child process, so an endless query never freezes the
server, and ATTACH of the server's own database neither leaks its signing key nor
costs it its WAL (registrations made afterwards survive a restart)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ADMIN_TOKEN
from .support import Edgesync, Response, Server, start_server

ENDLESS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n;"


@pytest.fixture
def serve(edgesync: Edgesync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start (and at the end stop) servers on one data dir, with extra environment."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        runner = Edgesync(edgesync.kind, edgesync.argv, {**edgesync.env, **env})
        server = start_server(runner, tmp_path, ADMIN_TOKEN)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def register(server: Server, name: str) -> str:
    token = server.request(
        "POST", "/api/v1/enrollment-tokens", {"max_uses": 1}, token=ADMIN_TOKEN
    ).json()["token"]
    created = server.request(
        "POST", "/api/v1/nodes/register", {"name": name, "enrollment_token": token}
    )
    assert created.status == 201, created.body
    return str(created.json()["node_id"])


def post_schema(server: Server, version: int, up_sql: str) -> Response:
    body = {"version": version, "up_sql": up_sql}
    return server.request("POST", "/api/v1/schemas", body, token=ADMIN_TOKEN)


def test_attaching_the_live_database_leaks_and_breaks_nothing(serve: Any, tmp_path: Path) -> None:
    server = serve()
    live = server.data_dir / "edgesync.db"
    before = register(server, "before")
    attacks = [
        f"CREATE TABLE loot (x TEXT);\n/**/ATTACH DATABASE '{live}' AS live;\n"
        "INSERT INTO loot SELECT json_extract('{}', value) FROM live.secrets;",
        f"/**/ATTACH DATABASE '{live}' AS live;\nCREATE TABLE live.pwned (x);",
    ]
    answers = [post_schema(server, 1, attack) for attack in attacks]
    after = register(server, "after")
    assert server.stop() == 0

    connection = sqlite3.connect(live)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        secrets = [row[0] for row in connection.execute("SELECT value FROM secrets")]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    for answer in answers:
        assert answer.status == 400, answer.body
        assert answer.json()["error"]["code"] == "INVALID_MIGRATION"
        assert not any(secret.encode() in answer.body for secret in secrets)
    assert "pwned" not in tables and "loot" not in tables

    again = serve()
    for node_id in (before, after):
        answer = again.request("GET", f"/api/v1/nodes/{node_id}", token=ADMIN_TOKEN)
        assert answer.status == 200, answer.body


def sandbox_children(server: Server) -> list[int]:
    """Pids of the server's migration-check children (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.process.pid and b"appliance.migration_sandbox" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_an_endless_check_never_freezes_the_server(serve: Any) -> None:
    server = serve(EDGESYNC_MIGRATION_CHECK_TIMEOUT="5")
    answers: list[Response] = []
    checking = threading.Thread(target=lambda: answers.append(post_schema(server, 1, ENDLESS)))
    checking.start()
    try:
        deadline = time.monotonic() + 60  # bounds the wait only
        while not sandbox_children(server) and checking.is_alive():
            assert time.monotonic() < deadline, "no migration-check child appeared"
            time.sleep(0.02)
        # The check is running in its child: the server answers meanwhile.
        assert server.request("GET", "/healthz").status == 200
        assert server.request("GET", "/api/v1/schemas", token=ADMIN_TOKEN).status == 200
        assert checking.is_alive(), "the endless check returned before the other requests"
    finally:
        checking.join(timeout=60)
    assert answers and answers[0].status == 400, answers
    error = answers[0].json()["error"]
    assert error["code"] == "INVALID_MIGRATION" and error["details"]["reason"] == "timeout"
    assert error["details"]["limit_seconds"] == 5.0  # EDGESYNC_MIGRATION_CHECK_TIMEOUT
    assert sandbox_children(server) == []  # killed at the limit, and reaped
    assert post_schema(server, 1, "CREATE TABLE fine (x);").status == 201
