"""A real ``edgesync serve`` killed (SIGKILL) in the middle of an upload, then restarted:
the retry succeeds at once and nothing of the killed upload is left in staging.

The kill lands while the module streams in (its staging file exists); the claim
the killed process would have held had it died between claiming and publishing
is then written as that process would have left it (owned by the killed
instance, whose lease has not run out yet), because no signal can be timed into
that window from outside. The restarted server must see that the owner is gone.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import ADMIN_TOKEN
from .support import Edgesync, Server, multipart, start_server

WAIT = 60.0  # bounds waiting only


def staging_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "staging").rglob("*") if p.is_file()]


def start_slow_upload(server: Server, body: bytes, content_type: str) -> socket.socket:
    """Send the headers and the first half of ``body``, and keep the connection open."""
    address = urlsplit(server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=WAIT)
    head = (
        f"POST /api/v1/functions HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


def wait_for_staging_file(data_dir: Path) -> Path:
    deadline = time.monotonic() + WAIT
    while not (files := staging_files(data_dir)):
        if time.monotonic() > deadline:
            pytest.fail("the upload never reached its staging file")
        time.sleep(0.05)
    return files[0]


def leave_claim(database_url: str | None, data_dir: Path, owner: str, now: str) -> str:
    """The claim a serve killed between claiming and publishing leaves; return the
    lease its instance still has."""
    row = (str(uuid.uuid4()), "hello", "1.0", "0" * 64, 1, "hello/1.0/function.wasm", now, owner)
    insert = (
        "INSERT INTO functions (id, name, version, sha256, size_bytes, storage_key, created_at,"
        " status, claim_owner) VALUES ({0}, {0}, {0}, {0}, {0}, {0}, {0}, 'uploading', {0})"
    )
    lease = "SELECT alive_until FROM serve_instances WHERE id = {0}"
    if database_url is None:
        with sqlite3.connect(data_dir / "edgesync.db") as connection:
            connection.execute(insert.format("?"), row)
            return str(connection.execute(lease.format("?"), (owner,)).fetchone()[0])
    import psycopg

    from appliance.store.postgres import parse_url

    with psycopg.connect(parse_url(database_url)[0], autocommit=True) as connection:
        connection.execute(insert.format("%s"), row)
        found = connection.execute(lease.format("%s"), (owner,)).fetchone()
        assert found is not None
        return str(found[0])


def test_an_upload_killed_mid_way_is_retried_at_once_after_a_restart(
    installed_edgesync: Edgesync,
    tmp_path: Path,
    database_kind: str,
    request: pytest.FixtureRequest,
    wasm: Any,
) -> None:
    from edgesync.protocol import format_time, utcnow

    edgesync, database_url = installed_edgesync, None
    if database_kind != "sqlite":
        database_url = request.getfixturevalue("postgres").new_url(pool_max="4")
        edgesync = Edgesync(
            edgesync.kind, edgesync.argv, {**edgesync.env, "DATABASE_URL": database_url}
        )
    module = wasm.big(4 * 1024 * 1024)
    body, content_type = multipart({"name": "hello", "version": "1.0"}, module)

    first = start_server(edgesync, tmp_path, ADMIN_TOKEN)
    try:
        sock = start_slow_upload(first, body, content_type)
        staged = wait_for_staging_file(first.data_dir)
        killed_instance = staged.parent.name
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=WAIT)
        sock.close()
    finally:
        first.stop()
    assert staging_files(first.data_dir) == [staged]  # what a kill leaves behind
    still_leased = leave_claim(database_url, first.data_dir, killed_instance, format_time(utcnow()))
    assert still_leased > format_time(utcnow())  # a lease alone would block the retry

    second = start_server(edgesync, tmp_path, ADMIN_TOKEN)
    try:
        assert not staged.parent.exists()
        answer = second.request(
            "POST",
            "/api/v1/functions",
            body=body,
            token=ADMIN_TOKEN,
            headers={"Content-Type": content_type},
        )
        assert answer.status == 201, answer.body[:500]
        assert answer.json()["version"] == "1.0"
        assert staging_files(second.data_dir) == []
    finally:
        assert second.stop() == 0, second.log()
