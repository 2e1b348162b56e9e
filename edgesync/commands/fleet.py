"""``edgesync fleet``: auto-release and the default release."""

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
