"""A start that fails leaves nothing behind and claims nothing it did not get.

Real processes: ``edgesync serve`` on a busy port must not create its data dir or
an admin token; a second ``serve`` on a data dir in use must not announce a URL;
an agent whose gateway port is busy must not enrol (an enrollment token's use is
not spent on a node that never runs).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import COMMAND_TIMEOUT, Edgesync, Server, start_server

ADMIN_TOKEN = "failed-starts-admin-token-0123456789"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process listens on (this one)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def running(installed_edgesync: Edgesync, tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "first").mkdir()
    server = start_server(installed_edgesync, tmp_path / "first", ADMIN_TOKEN)
    try:
        yield server
    finally:
        server.stop()


def run(edgesync: Edgesync, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [*edgesync.argv, *args],
        env={**edgesync.env, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    return result.returncode, result.stdout


def test_serve_on_a_busy_port_writes_nothing(
    installed_edgesync: Edgesync, tmp_path: Path, busy_port: int
) -> None:
    data_dir = tmp_path / "data"
    code, output = run(
        installed_edgesync,
        *("serve", "--host", "127.0.0.1", "--port", str(busy_port), "--data-dir", str(data_dir)),
    )
    assert code != 0
    assert output.strip().splitlines() == [
        f"error: cannot serve the API on 127.0.0.1:{busy_port}: address already in use"
        " (ADDRESS_IN_USE)"
    ]
    assert not data_dir.exists()  # no dir, no admin token, no database


def test_serve_with_a_busy_mqtt_port_writes_nothing(
    installed_edgesync: Edgesync, tmp_path: Path, busy_port: int
) -> None:
    data_dir = tmp_path / "data"
    code, output = run(
        installed_edgesync,
        *("serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)),
        *("--mqtt", "--mqtt-listen", f"127.0.0.1:{busy_port}"),
    )
    assert code != 0 and "(ADDRESS_IN_USE)" in output and "MQTT" in output, output
    assert not data_dir.exists()


def test_a_second_serve_on_the_same_data_dir_announces_nothing(
    installed_edgesync: Edgesync, running: Server
) -> None:
    admin_token = (running.data_dir / "admin-token").exists()
    code, output = run(
        installed_edgesync,
        *("serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(running.data_dir)),
        env={"EDGESYNC_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert code != 0
    lines = output.strip().splitlines()
    assert lines[-1] == (
        f"error: another edgesync serve is using {running.data_dir}; the embedded SQLite"
        " store allows one server per data dir (DATA_DIR_LOCKED)"
    ), output
    assert "edgesync serve on" not in output and "http://" not in output, output
    assert (running.data_dir / "admin-token").exists() == admin_token
    assert running.request("GET", "/healthz").status == 200  # the first one is unharmed


def test_an_agent_with_a_busy_gateway_port_does_not_enrol(
    installed_edgesync: Edgesync, running: Server, tmp_path: Path, busy_port: int
) -> None:
    created = running.request(
        "POST", "/api/v1/enrollment-tokens", {"max_uses": 1}, token=ADMIN_TOKEN
    )
    assert created.status == 201, created.body
    token = created.json()["token"]
    data_dir = tmp_path / "edge"
    agent = ("agent", "--server", running.url, "--data-dir", str(data_dir))
    code, output = run(
        installed_edgesync,
        *agent,
        *("--enrollment-token", token, "--gateway", f"127.0.0.1:{busy_port}"),
        *("--runtime", "wasmtime"),
    )
    assert code != 0
    assert output.strip().splitlines()[-1] == (
        f"error: cannot serve the gateway on 127.0.0.1:{busy_port}: address already in use"
        " (ADDRESS_IN_USE)"
    ), output
    assert not data_dir.exists()
    nodes = running.request("GET", "/api/v1/nodes", token=ADMIN_TOKEN).json()["nodes"]
    assert nodes == []
    # The single-use token is still good: the node enrols with it once the port is free.
    code, output = run(
        installed_edgesync,
        *agent,
        *("--enrollment-token", token, "--once", "--runtime", "wasmtime"),
    )
    assert code == 0, output
    assert json.loads((data_dir / "node.json").read_text())["node_id"]


def test_a_second_agent_on_the_same_data_dir_is_refused(
    installed_edgesync: Edgesync, running: Server, tmp_path: Path
) -> None:
    created = running.request(
        "POST", "/api/v1/enrollment-tokens", {"max_uses": 1}, token=ADMIN_TOKEN
    )
    data_dir = tmp_path / "edge"
    agent = ("agent", "--server", running.url, "--data-dir", str(data_dir), "--no-gateway")
    code, output = run(
        installed_edgesync, *agent, "--once", "--enrollment-token", created.json()["token"]
    )
    assert code == 0, output
    with (data_dir / ".agent.lock").open("r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running agent holds it, with its pid
        held.truncate()
        held.write(str(os.getpid()))
        held.flush()
        code, output = run(installed_edgesync, *agent, "--once")
    assert code != 0
    assert output.strip().splitlines()[-1] == (
        f"error: another edgesync agent (pid {os.getpid()}) is using {data_dir} (DATA_DIR_LOCKED)"
    ), output
