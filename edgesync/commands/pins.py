"""``edgesync nodes pin`` / ``unpin`` (attached to the ``nodes`` group by operator.py)."""

from __future__ import annotations

import click

from edgesync.client import ApiClient
from edgesync.commands.operator import api_command, emit


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
