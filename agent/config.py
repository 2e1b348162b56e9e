"""Configuration of ``edgesync agent``: one dataclass, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgesync.errors import BadConfig


@dataclass
class AgentConfig:
    server: str
    data_dir: Path
    enrollment_token: str | None = None
    name: str | None = None
    region: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    poll_interval_seconds: float | None = None  # None: what the control plane said
    runtime: str = "auto"  # auto | wasmedge | wasmtime
    gateway: str | None = "127.0.0.1:8700"  # None: no gateway
    function_timeout_seconds: float = 10.0
    function_memory_mb: int = 128
    ca_file: str | None = None
    once: bool = False
    max_tries: int = 5
    # MQTT push: use the broker the registration named (False: poll only).
    mqtt: bool = True
    # Connect here instead (mqtt://host:port), e.g. for a node registered before
    # the control plane enabled MQTT.
    mqtt_url: str | None = None

    @property
    def gateway_address(self) -> tuple[str, int] | None:
        if not self.gateway:
            return None
        host, _, port = self.gateway.rpartition(":")
        return (host.strip("[]") or "127.0.0.1"), int(port)  # [::1]:8700 too

    def validate(self) -> None:
        if not self.server.startswith(("http://", "https://")):
            raise BadConfig("--server must be an http:// or https:// URL")
        if self.runtime not in ("auto", "wasmedge", "wasmtime"):
            raise BadConfig("--runtime must be auto, wasmedge or wasmtime")
        if self.poll_interval_seconds is not None and self.poll_interval_seconds <= 0:
            raise BadConfig("--poll-interval must be positive")
        if self.function_timeout_seconds <= 0:
            raise BadConfig("--function-timeout must be positive")
        if self.mqtt_url:
            from edgesync.mqtt import parse_broker_url

            parse_broker_url(self.mqtt_url, "--mqtt-url")
        if self.gateway:
            _host, sep, port = self.gateway.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise BadConfig("--gateway must be HOST:PORT")
