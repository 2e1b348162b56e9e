"""``edgesync rollout``: start, watch and steer staged rollouts."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from edgesync.client import ApiClient
from edgesync.commands.operator import _all_pages, api_command, emit, table
from edgesync.errors import EdgesyncError

ENDED = ("completed", "aborted", "rolled_back")
STATES = ("running", "paused", *ENDED)
BAR_WIDTH = 30


@click.group()
def rollout() -> None:
    """Staged rollouts of a release: waves, health gates, pause and rollback."""


def parse_size(value: str) -> int | str:
    """``3`` or ``25%`` as the API's wave size / failure budget."""
    text = value.strip()
    if text.endswith("%") and text[:-1].replace(".", "", 1).isdigit():
        return text
    if text.isdigit():
        return int(text)
    raise EdgesyncError(f"{value!r} is neither a count nor a percentage", code="BAD_INPUT")


def parse_rate(value: str) -> float:
    """``5%`` or ``0.05`` as a fraction."""
    text = value.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise EdgesyncError(f"{value!r} is not a rate like 5%", code="BAD_INPUT") from exc


def parse_selector(values: tuple[str, ...]) -> dict[str, Any]:
    """``region=eu``, ``node=ID`` (repeatable) and any other ``KEY=VALUE`` as a label."""
    selector: dict[str, Any] = {}
    for item in values:
        for part in item.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise EdgesyncError(f"--selector takes KEY=VALUE, not {part!r}", code="BAD_INPUT")
            if key == "region":
                selector["region"] = value
            elif key in ("node", "node_id"):
                selector.setdefault("node_ids", []).append(value)
            else:
                selector.setdefault("labels", {})[key] = value
    return selector


@rollout.command("start")
@click.argument("release_id")
@click.option("--selector", multiple=True, help="region=eu, node=ID or LABEL=VALUE.")
@click.option("--waves", default="100%", show_default=True, help="Cumulative sizes: 1,25%,100%.")
@click.option("--max-failures", default="0", show_default=True, help="A count or a share: 10%.")
@click.option("--wave-timeout", type=click.IntRange(0), default=900, show_default=True)
@click.option("--observe", type=click.IntRange(0), default=0, help="Seconds to watch each wave.")
@click.option("--max-error-rate", help="Functions' error rate that fails a node: 5%.")
@click.option("--no-auto-rollback", is_flag=True, help="Pause on failures instead.")
@click.option("--allow-irreversible", is_flag=True, help="Accept a rollback without down_sql.")
@click.option("--dry-run", is_flag=True, help="Show the waves and each node's changes only.")
@api_command
def rollout_start(
    client: ApiClient,
    release_id: str,
    selector: tuple[str, ...],
    waves: str,
    max_failures: str,
    wave_timeout: int,
    observe: int,
    max_error_rate: str | None,
    no_auto_rollback: bool,
    allow_irreversible: bool,
    dry_run: bool,
) -> None:
    """Move the selected nodes to RELEASE_ID in waves; prints the rollout."""
    body = {
        "release_id": release_id,
        "selector": parse_selector(selector),
        "waves": [parse_size(w) for w in waves.split(",") if w.strip()],
        "max_failures": parse_size(max_failures),
        "wave_timeout_seconds": wave_timeout,
        "observe_seconds": observe,
        "max_function_error_rate": parse_rate(max_error_rate) if max_error_rate else None,
        "auto_rollback": not no_auto_rollback,
        "allow_irreversible": allow_irreversible,
    }
    query = {"dry_run": "true"} if dry_run else None
    emit(client.request("POST", "/api/v1/rollouts", body, query=query))


@rollout.command("list")
@click.option(
    "--state", type=click.Choice(["running", "paused", "completed", "aborted", "rolled_back"])
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_command
def rollout_list(client: ApiClient, state: str | None, as_json: bool) -> None:
    """List rollouts."""
    rows = _all_pages(client, "/api/v1/rollouts", "rollouts", {"state": state})
    if as_json:
        emit(rows)
        return
    for row in rows:
        row["waves"] = "/".join(str(w["size"]) for w in row["waves"])
    table(rows, ["id", "release_id", "state", "waves", "failures", "created_at"])


def render(rollout: dict[str, Any]) -> list[str]:
    """One line for the rollout, one progress bar per wave."""
    lines = [
        f"rollout {rollout['id']}  release {rollout['release_id']}  {rollout['state']}"
        f"  failures {rollout['failures']}"
    ]
    previous = 0
    for wave in rollout["waves"]:
        members = wave["size"] - previous
        previous = wave["size"]
        nodes = wave["nodes"]
        done = nodes["applied"] + nodes["failed"]
        filled = round(BAR_WIDTH * done / members) if members else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        lines.append(
            f"  wave {wave['index'] + 1} [{bar}] {done}/{members} {wave['state']:<8}"
            f" applied {nodes['applied']} failed {nodes['failed']}"
        )
    return lines


@rollout.command("status")
@click.argument("rollout_id")
@click.option("--watch", is_flag=True, help="Redraw until the rollout ends (on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the rollout as JSON.")
@api_command
def rollout_status(client: ApiClient, rollout_id: str, watch: bool, as_json: bool) -> None:
    """Show a rollout's waves; with --watch keep redrawing until it ends."""
    shown = client.request("GET", f"/api/v1/rollouts/{rollout_id}")
    if as_json:
        emit(shown)
        return
    lines = render(shown)
    click.echo("\n".join(lines))
    redraw = watch and sys.stdout.isatty()
    while watch and shown["state"] not in ENDED:
        time.sleep(1.0)
        shown = client.request("GET", f"/api/v1/rollouts/{rollout_id}")
        fresh = render(shown)
        if redraw:  # move up over the previous drawing and overwrite it
            click.echo(f"\x1b[{len(lines)}F\x1b[J", nl=False)
            click.echo("\n".join(fresh))
        elif fresh != lines:
            click.echo("\n".join(fresh))
        lines = fresh


def _action(name: str, doc: str) -> click.Command:
    @click.argument("rollout_id")
    @api_command
    def command(client: ApiClient, rollout_id: str) -> None:
        emit(client.request("POST", f"/api/v1/rollouts/{rollout_id}/{name}", {}))

    command.__doc__ = doc
    return rollout.command(name)(command)


_action("pause", "Stop starting new waves (nodes given the release keep it).")
_action("resume", "Continue a paused rollout (its failures so far are accepted).")
_action("abort", "End the rollout where it is.")
_action("rollback", "Give every node of the rollout its previous target back.")
