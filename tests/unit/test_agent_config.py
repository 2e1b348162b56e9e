"""``edgesync agent`` settings: what --gateway means, and what is refused as BAD_CONFIG."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from edgesync.errors import BadConfig


def config(**settings: object) -> AgentConfig:
    given = {"server": "http://127.0.0.1:8080", "data_dir": Path("node"), **settings}
    return AgentConfig(**given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gateway", "address"),
    [
        ("127.0.0.1:8700", ("127.0.0.1", 8700)),
        (":8700", ("127.0.0.1", 8700)),
        ("[::1]:8700", ("::1", 8700)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_gateway_addresses(gateway: str, address: tuple[str, int]) -> None:
    assert config(gateway=gateway).gateway_address == address


@pytest.mark.parametrize(
    "settings",
    [
        {"gateway": "8700"},
        {"gateway": "host:port"},
        {"gateway": "host:70000"},
        {"server": "ftp://x"},
        {"runtime": "docker"},
        {"poll_interval_seconds": 0},
        {"function_timeout_seconds": -1},
    ],
)
def test_impossible_settings_are_bad_config(settings: dict[str, object]) -> None:
    with pytest.raises(BadConfig) as refused:
        config(**settings).validate()
    assert refused.value.code == "BAD_CONFIG"
    assert isinstance(refused.value, ValueError)  # callers that caught ValueError still do
