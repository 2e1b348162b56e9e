"""``edgesync release``: create, list and show releases (schema and functions as one unit)."""

from __future__ import annotations

from typing import Any

import click

from edgesync.client import ApiClient
from edgesync.commands.operator import _all_pages, api_command, emit, table
from edgesync.errors import EdgesyncError


@click.group()
def release() -> None:
    """Releases: immutable, numbered snapshots of a schema version and functions."""


def parse_function(value: str) -> dict[str, str]:
    """``NAME@VERSION`` as the API's {name, version}."""
    name, at, version = value.partition("@")
    if not at or not name or not version:
        raise EdgesyncError(f"--function takes NAME@VERSION, not {value!r}", code="BAD_INPUT")
    return {"name": name, "version": version}


@release.command("create")
@click.option("--schema", "schema_version", required=True, type=click.IntRange(0))
@click.option("--function", "functions", multiple=True, metavar="NAME@VERSION")
@click.option("--notes", help="Why this release exists.")
@api_command
def release_create(
    client: ApiClient, schema_version: int, functions: tuple[str, ...], notes: str | None
) -> None:
    """Create the next release: schema version N with the given function versions."""
    body = {
        "schema_version": schema_version,
        "functions": [parse_function(f) for f in functions],
        "notes": notes,
    }
    emit(client.request("POST", "/api/v1/releases", body))


@release.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_command
def release_list(client: ApiClient, as_json: bool) -> None:
    """List releases, newest first."""
    rows = _all_pages(client, "/api/v1/releases", "releases", {})
    if as_json:
        emit(rows)
        return
    for row in rows:
        row["functions"] = ",".join(f"{f['name']}@{f['version']}" for f in row["functions"])
    table(rows, ["number", "id", "schema_version", "functions", "notes", "created_at"])


@release.command("show")
@click.argument("release_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the diff) instead.")
@api_command
def release_show(client: ApiClient, release_id: str, as_json: bool) -> None:
    """Show a release and what changed since the release before it."""
    shown = client.request("GET", f"/api/v1/releases/{release_id}")
    previous = None
    if shown.get("previous_release_id"):
        previous = client.request("GET", f"/api/v1/releases/{shown['previous_release_id']}")
    changes = release_diff(previous, shown)
    if as_json:
        emit({**shown, "changes": changes})
        return
    click.echo(f"release {shown['number']}  {shown['id']}")
    click.echo(f"schema version {shown['schema_version']}, created {shown['created_at']}")
    if shown.get("notes"):
        click.echo(f"notes: {shown['notes']}")
    for fn in shown["functions"]:
        click.echo(f"  {fn['name']}@{fn['version']}  {fn['sha256'][:12]}")
    since = f"release {previous['number']}" if previous else "nothing (the first release)"
    click.echo(f"changes since {since}:")
    for line in changes or ["(none)"]:
        click.echo(f"  {line}")


def release_diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """One line per difference: the schema move, functions added, changed, removed."""
    lines = []
    old_schema = before["schema_version"] if before else 0
    if old_schema != after["schema_version"]:
        lines.append(f"schema {old_schema} -> {after['schema_version']}")
    old = {f["name"]: f["version"] for f in (before or {}).get("functions", [])}
    new = {f["name"]: f["version"] for f in after["functions"]}
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            lines.append(f"+ {name}@{new[name]}")
        elif name not in new:
            lines.append(f"- {name}@{old[name]}")
        elif old[name] != new[name]:
            lines.append(f"~ {name} {old[name]} -> {new[name]}")
    return lines
