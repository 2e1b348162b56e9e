"""``edgesync fleet`` (auto-release, default release) and ``nodes pin`` / ``unpin``."""

from __future__ import annotations

import click

from edgesync.client import ApiClient
from edgesync.commands.operator import api_command, emit


@click.group()
def fleet() -> None:
    """Fleet-wide release settings."""


@fleet.command("show")
@api_command
def fleet_show(client: ApiClient) -> None:
    """Show auto-release and the default release."""
    emit(client.request("GET", "/api/v1/fleet"))


@fleet.command("set")
@click.option(
    "--auto-release",
    type=click.Choice(["on", "off"]),
    help="on: every upload, schema or deletion is a release the fleet follows.",
)
@click.option("--default-release", help="Release id for nodes without one (new nodes).")
@api_command
def fleet_set(client: ApiClient, auto_release: str | None, default_release: str | None) -> None:
    """Change fleet settings; prints them."""
    body: dict[str, object] = {}
    if auto_release is not None:
        body["auto_release"] = auto_release == "on"
    if default_release is not None:
        body["default_release_id"] = default_release
    emit(client.request("PUT", "/api/v1/fleet", body))


@click.command("pin")
@click.argument("node_id")
@click.argument("release_id")
@api_command
def nodes_pin(client: ApiClient, node_id: str, release_id: str) -> None:
    """Pin NODE_ID to RELEASE_ID: auto-release and rollouts leave it alone."""
    emit(client.request("PUT", f"/api/v1/nodes/{node_id}/pin", {"release_id": release_id}))


@click.command("unpin")
@click.argument("node_id")
@api_command
def nodes_unpin(client: ApiClient, node_id: str) -> None:
    """Unpin NODE_ID: its target is at once what it would be without the pin."""
    emit(client.request("DELETE", f"/api/v1/nodes/{node_id}/pin"))
