"""packaging/docker-compose.yml: the seed's services, and only variables the CLI reads.

No Docker engine (or compose plugin) runs here, so the file is checked by reading it:
its structure, the references between services, and the control plane's environment
against the options of `edgesync serve`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from .support import (
    PACKAGING,
    ROOT,
    cli_env_vars,
    compose_environment,
    interpolate,
    parse,
    parse_dockerfile,
    required_variables,
    unread_env_vars,
    yaml_documents,
)

COMPOSE = PACKAGING / "docker-compose.yml"
ENV_EXAMPLE = PACKAGING / "compose.env.example"
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (document,) = yaml_documents(COMPOSE)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, Any] = compose["services"]
    return services


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def api_env(services: dict[str, Any], example_env: dict[str, str]) -> dict[str, str]:
    """control-plane-api's environment as compose would pass it, with the example .env."""
    raw = compose_environment(services["control-plane-api"])
    return {key: interpolate(value, example_env) for key, value in raw.items()}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def test_the_seeds_services(services: dict[str, Any]) -> None:
    assert {"cockroachdb", "minio", "mosquitto", "control-plane-api"} <= set(services)
    # Mosquitto is optional (a profile); everything else starts by default.
    assert services["mosquitto"]["profiles"] == ["mqtt"]
    for name, service in services.items():
        if name != "mosquitto":
            assert "profiles" not in service, name


def test_cockroachdb_single_node(services: dict[str, Any]) -> None:
    cockroach = services["cockroachdb"]
    assert "start-single-node --insecure" in command_text(cockroach)
    assert {"26257:26257", "8081:8080"} <= set(cockroach["ports"])
    assert any(v.endswith(":/cockroach/cockroach-data") for v in cockroach["volumes"])
    assert cockroach["healthcheck"]["test"]


def test_compose_says_its_cockroachdb_is_insecure_and_for_development() -> None:
    text = COMPOSE.read_text()
    service = text[text.index("  cockroachdb:") : text.index("command: start-single-node")]
    assert "INSECURE, FOR DEVELOPMENT ONLY" in service


def test_the_database_is_created_before_the_api_starts(
    services: dict[str, Any], api_env: dict[str, str]
) -> None:
    database = urlsplit(api_env["DATABASE_URL"]).path.lstrip("/")
    (init,) = [
        name
        for name, service in services.items()
        if f"CREATE DATABASE IF NOT EXISTS {database}" in command_text(service)
    ]
    assert services[init]["restart"] == "no"
    assert services[init]["depends_on"]["cockroachdb"]["condition"] == "service_healthy"
    depends = services["control-plane-api"]["depends_on"]
    assert depends[init]["condition"] == "service_completed_successfully"
    assert depends["minio"]["condition"] == "service_healthy"


def test_minio(services: dict[str, Any]) -> None:
    minio = services["minio"]
    assert command_text(minio) == "server /data --console-address :9001"
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(compose_environment(minio))
    assert any(v.endswith(":/data") for v in minio["volumes"])
    assert minio["healthcheck"]["test"]


def test_references_resolve(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in DEPENDS_CONDITIONS
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in declared_volumes, f"{name}: undeclared volume {source}"


def test_the_api_is_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    api = services["control-plane-api"]
    build = api["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == PACKAGING / "Dockerfile"
    assert "8080:8080" in api["ports"]
    # The image's command serves on the port published here.
    cmd = parse_dockerfile(PACKAGING / "Dockerfile").stages[-1].last("CMD")
    assert cmd is not None
    args = cmd.exec_form()
    assert args is not None
    assert parse("serve", args[1:]).params["port"] == 8080


def test_api_environment_is_what_serve_reads(api_env: dict[str, str]) -> None:
    readable = cli_env_vars("serve")
    assert set(api_env) <= readable, f"not read by `edgesync serve`: {set(api_env) - readable}"
    # Each variable reaches an option, with a value click accepts.
    assert unread_env_vars("serve", api_env) == set()


def test_api_environment_names_the_shared_stores(api_env: dict[str, str]) -> None:
    required = {
        "DATABASE_URL",
        "MINIO_ENDPOINT",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "EDGESYNC_ADMIN_TOKEN",
        "EDGESYNC_PUBLIC_URL",
    }
    assert required <= set(api_env)
    database = urlsplit(api_env["DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port) == (
        "postgresql",
        "cockroachdb",
        26257,
    )
    assert api_env["MINIO_ENDPOINT"] == "minio:9000"
    # MQTT push: the embedded broker (MQTT_BROKER, commented out, names Mosquitto instead).
    assert {key for key in api_env if key.startswith("MQTT_")} == {"MQTT_ENABLED"}
    assert api_env["MQTT_ENABLED"] == "true"


def test_api_uses_minio_root_credentials(services: dict[str, Any]) -> None:
    api = compose_environment(services["control-plane-api"])
    minio = compose_environment(services["minio"])
    assert api["MINIO_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert api["MINIO_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_secrets_have_no_defaults_and_the_example_names_them(example_env: dict[str, str]) -> None:
    text = COMPOSE.read_text()
    required = required_variables(text)
    assert {"EDGESYNC_ADMIN_TOKEN", "MINIO_ROOT_PASSWORD"} <= required
    assert required <= set(example_env)
    for name in required:
        assert "REPLACE-ME" in example_env[name]
    # Every variable the file interpolates is documented in the example.
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used <= set(example_env), used - set(example_env)


def test_interpolation_refuses_missing_secrets(services: dict[str, Any]) -> None:
    raw = compose_environment(services["control-plane-api"])
    with pytest.raises(KeyError):
        interpolate(raw["EDGESYNC_ADMIN_TOKEN"], {})


def test_mosquitto_config_exists_and_listens(services: dict[str, Any]) -> None:
    conf = PACKAGING / "mosquitto" / "mosquitto.conf"
    assert "listener 1883" in conf.read_text()
    assert "1883:1883" in services["mosquitto"]["ports"]
