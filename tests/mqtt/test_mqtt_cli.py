"""The command line: ``edgesync serve`` options and variables, and the real processes.

The end-to-end test runs ``edgesync serve`` with the embedded broker switched on
by ``MQTT_ENABLED=true`` (as in the compose file) and an ``edgesync agent`` that
polls every 30 s, and checks that a release reaches the node within seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from e2e.support import clean_env, free_port, http_request, multipart
from mqtt_support import PUSH_BOUND, module

from appliance.config import ServeConfig
from edgesync.commands.serve import serve

ADMIN_TOKEN = "mqtt-cli-admin-token-0123456789"
STARTUP = 60.0


def configured(monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]) -> Any:
    """The ServeConfig ``edgesync serve ARGS`` builds (nothing is started)."""
    seen: list[ServeConfig] = []
    monkeypatch.setattr("appliance.server.run", seen.append)
    result = CliRunner().invoke(serve, args, env=env, catch_exceptions=False)
    if result.exit_code != 0:
        return result.output
    return seen[0]


@pytest.mark.parametrize(
    ("args", "env", "mode", "broker"),
    [
        ([], {}, None, None),
        (["--mqtt"], {}, "embedded", None),
        ([], {"MQTT_ENABLED": "true"}, "embedded", None),
        ([], {"MQTT_ENABLED": "false"}, None, None),
        ([], {"MQTT_BROKER": "mqtt://mosquitto:1883"}, "external", "mqtt://mosquitto:1883"),
        (
            [],
            {"MQTT_ENABLED": "true", "MQTT_BROKER": "mqtt://mosquitto:1883"},
            "external",
            "mqtt://mosquitto:1883",
        ),
        (["--no-mqtt"], {"MQTT_BROKER": "mqtt://mosquitto:1883"}, None, "mqtt://mosquitto:1883"),
        (["--mqtt-broker", "emqx:1883"], {}, "external", "emqx:1883"),
    ],
)
def test_serve_options_and_variables(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    mode: str | None,
    broker: str | None,
) -> None:
    config = configured(monkeypatch, ["--data-dir", str(tmp_path), *args], env)
    assert isinstance(config, ServeConfig), config
    assert config.mqtt_mode == mode
    assert config.mqtt_broker == broker


def test_serve_mqtt_settings_reach_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    args = ["--data-dir", str(tmp_path), "--mqtt", "--mqtt-listen", "[::1]:1999"]
    env = {
        "EDGESYNC_MQTT_PUBLIC_URL": "mqtt://mqtt.example.com:1999",
        "EDGESYNC_MQTT_WATCH_INTERVAL": "2.5",
    }
    config = configured(monkeypatch, args, env)
    assert isinstance(config, ServeConfig), config
    assert (config.mqtt_listen, config.mqtt_public_url, config.mqtt_watch_interval) == (
        "[::1]:1999",
        "mqtt://mqtt.example.com:1999",
        2.5,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mqtt-listen", "1883"], "--mqtt-listen must be HOST:PORT"),
        (["--mqtt-listen", "0.0.0.0:70000"], "--mqtt-listen must be HOST:PORT"),
        (["--mqtt-broker", "http://broker:1883"], "--mqtt-broker must start with mqtt://"),
        (["--mqtt-broker", "mqtt://u:hunter2@:1883"], "names no host"),
        (["--mqtt-public-url", "ws://x:80"], "--mqtt-public-url must start with mqtt://"),
        (["--mqtt-public-url", "mqtt://u:p@x:1"], "must not carry credentials"),
        (["--mqtt-watch-interval", "0"], "0.05<=x<=300"),
    ],
)
def test_impossible_mqtt_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    output = configured(monkeypatch, ["--data-dir", str(tmp_path), *args], {})
    assert isinstance(output, str), output
    assert message in output
    assert "hunter2" not in output


def test_the_agent_has_mqtt_options() -> None:
    from edgesync.commands.agent import agent

    result = CliRunner().invoke(agent, ["--data-dir", "x", "--help"])
    assert "--mqtt / --no-mqtt" in result.output and "--mqtt-url" in result.output


# -- the real processes ----------------------------------------------------------------


def edgesync() -> list[str]:
    script = Path(sys.executable).with_name("edgesync")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgesync"]


def wait_for(probe: Any, what: str, within: float = STARTUP, logs: tuple[Path, ...] = ()) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            value = probe()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            details = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
            pytest.fail(f"gave up waiting for {what}\n{details}")
        time.sleep(0.05)


def test_serve_and_agent_processes_converge_by_push(tmp_path: Path) -> None:
    port, mqtt_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    serve_log, agent_log = tmp_path / "serve.log", tmp_path / "agent.log"
    env = clean_env()
    serve_env = {**env, "EDGESYNC_ADMIN_TOKEN": ADMIN_TOKEN, "MQTT_ENABLED": "true"}
    argv = [
        *edgesync(),
        "serve",
        *("--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "cp")),
        *("--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--log-level", "warning"),
    ]
    with serve_log.open("wb") as log:
        server = subprocess.Popen(argv, env=serve_env, stdout=log, stderr=subprocess.STDOUT)
    agent: subprocess.Popen[bytes] | None = None
    logs = (serve_log, agent_log)
    try:
        wait_for(lambda: http_request("GET", f"{base}/healthz").status == 200, "serve", logs=logs)
        created = http_request(
            "POST", f"{base}/api/v1/enrollment-tokens", {"max_uses": 1}, admin
        ).json()
        agent_argv = [
            *edgesync(),
            "agent",
            *("--server", base, "--data-dir", str(tmp_path / "edge")),
            *("--enrollment-token", created["token"], "--poll-interval", "30"),
            *("--no-gateway", "--runtime", "wasmtime"),
        ]
        with agent_log.open("wb") as log:
            agent = subprocess.Popen(agent_argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        def metric(name: str) -> float:
            text = http_request("GET", f"{base}/metrics").body.decode()
            values = [line.split()[-1] for line in text.splitlines() if line.startswith(name)]
            return float(values[0]) if values else 0.0

        wait_for(lambda: metric("edgesync_mqtt_clients") == 1, "the agent's MQTT login", logs=logs)
        node_json = tmp_path / "edge" / "node.json"
        node = json.loads(node_json.read_text())
        assert node["mqtt"]["url"] == f"mqtt://127.0.0.1:{mqtt_port}"
        time.sleep(1.0)  # the agent's first syncs are over: it sleeps for 30 s now

        body, content_type = multipart({"name": "hello", "version": "1.0.0"}, module(7))
        started = time.monotonic()
        answer = http_request(
            "POST", f"{base}/api/v1/functions", body, {**admin, "Content-Type": content_type}
        )
        assert answer.status == 201, answer.body

        def on_release() -> bool:
            state = http_request("GET", f"{base}/api/v1/nodes/{node['node_id']}", None, admin)
            return [f["version"] for f in state.json()["functions"]] == ["1.0.0"]

        wait_for(on_release, "the node on the release", within=30, logs=logs)
        assert time.monotonic() - started < PUSH_BOUND, agent_log.read_text()
        assert metric("edgesync_mqtt_notifications_total") >= 1
    finally:
        for process in (agent, server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert server.returncode == 0, serve_log.read_text()
    assert ADMIN_TOKEN not in serve_log.read_text()
    token = json.loads((tmp_path / "edge" / "node.json").read_text())["token"]
    assert token not in serve_log.read_text() and token not in agent_log.read_text()
