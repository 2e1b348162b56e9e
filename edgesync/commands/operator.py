"""Operator commands: thin wrappers over :class:`edgesync.client.ApiClient`.

Every command takes ``--server``/``--token`` (or ``EDGESYNC_SERVER`` /
``EDGESYNC_TOKEN``). An API error (or any other) ends the command in one line
``error: MESSAGE (CODE)`` on stderr and exit 1, rendered by ``edgesync.reporting``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgesync.client import ApiClient, client_from
from edgesync.errors import EdgesyncError

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_THRESHOLD = 4 * 1024 * 1024


def api_command(func: F) -> F:
    """Add --server/--token and hand the command a client (errors: edgesync.reporting)."""

    @click.option("--server", envvar="EDGESYNC_SERVER", help="Control plane URL (EDGESYNC_SERVER).")
    @click.option("--token", envvar="EDGESYNC_TOKEN", help="Admin token (EDGESYNC_TOKEN).")
    @functools.wraps(func)
    def wrapper(server: str | None, token: str | None, **kwargs: Any) -> Any:
        return func(client_from(server, token), **kwargs)

    return wrapper  # type: ignore[return-value]


def emit(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# -- upload ---------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.argument("version")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--requires-schema",
    type=click.IntRange(0),
    default=0,
    help="The lowest schema version the function works with (checked by releases).",
)
@api_command
def upload(client: ApiClient, name: str, version: str, file: Path, requires_schema: int) -> None:
    """Upload FILE as version VERSION of function NAME; prints the function JSON."""
    sha256 = _sha256_of(file)  # the server re-checks the bytes it received against it
    size = file.stat().st_size
    if size > PROGRESS_THRESHOLD and sys.stderr.isatty():
        with click.progressbar(length=size, label=f"uploading {file.name}", file=sys.stderr) as bar:
            result = client.upload(
                name, version, file, sha256, progress=bar.update, requires_schema=requires_schema
            )
    else:
        result = client.upload(name, version, file, sha256, requires_schema=requires_schema)
    emit(result)


# -- functions ------------------------------------------------------------------------


@click.group()
def functions() -> None:
    """Inspect and delete uploaded functions."""


@functions.command("list")
@click.option("--name", help="Only versions of this function.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_command
def functions_list(client: ApiClient, name: str | None, as_json: bool) -> None:
    """List function versions (all pages)."""
    rows = _all_pages(client, "/api/v1/functions", "functions", {"name": name})
    if as_json:
        emit(rows)
    else:
        table(rows, ["id", "name", "version", "size_bytes", "created_at"])


@functions.command("show")
@click.argument("function_id")
@api_command
def functions_show(client: ApiClient, function_id: str) -> None:
    """Show one function version."""
    emit(client.request("GET", f"/api/v1/functions/{function_id}"))


@functions.command("delete")
@click.argument("function_id")
@api_command
def functions_delete(client: ApiClient, function_id: str) -> None:
    """Withdraw a function version: nodes remove it or fall back to the previous one."""
    client.request("DELETE", f"/api/v1/functions/{function_id}")
    click.echo(f"deleted {function_id}")


def _all_pages(client: ApiClient, path: str, key: str, query: dict[str, Any]) -> list[Any]:
    rows: list[Any] = []
    cursor = None
    while True:
        page = client.request("GET", path, query={**query, "limit": 500, "cursor": cursor})
        rows += page[key]
        cursor = page.get("next_cursor")
        if not cursor:
            return rows


# -- schema ---------------------------------------------------------------------------


@click.group()
def schema() -> None:
    """Manage the SQL schema migrations applied on every node."""


@schema.command("add")
@click.option("--version", "version", required=True, type=click.IntRange(1))
@click.option(
    "--up", "up_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--down", "down_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--description", default="", help="What the migration does.")
@click.option(
    "--allow-destructive",
    is_flag=True,
    help="Accept DROP, a table rename, DELETE or UPDATE without WHERE in the up SQL.",
)
@api_command
def schema_add(
    client: ApiClient,
    version: int,
    up_file: Path,
    down_file: Path | None,
    description: str,
    allow_destructive: bool,
) -> None:
    """Append migration VERSION (must be one past the highest).

    With --down, the down SQL is checked too: up, down, then up again must apply.
    """
    body = {
        "version": version,
        "description": description,
        "up_sql": _sql_file(up_file),
        "down_sql": _sql_file(down_file) if down_file else None,
        "allow_destructive": allow_destructive,
    }
    emit(client.request("POST", "/api/v1/schemas", body))


def _sql_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EdgesyncError(f"{path} is not UTF-8 text", code="BAD_INPUT") from exc


@schema.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_command
def schema_list(client: ApiClient, as_json: bool) -> None:
    """List migrations in order."""
    migrations = client.request("GET", "/api/v1/schemas")["migrations"]
    if as_json:
        emit(migrations)
    else:
        table(migrations, ["version", "description", "checksum", "created_at"])


# -- nodes ----------------------------------------------------------------------------


@click.group()
def nodes() -> None:
    """Inspect the fleet."""


@nodes.command("list")
@click.option("--status", type=click.Choice(["online", "offline", "syncing"]))
@click.option("--region")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_command
def nodes_list(client: ApiClient, status: str | None, region: str | None, as_json: bool) -> None:
    """List nodes (all pages)."""
    rows = _all_pages(client, "/api/v1/nodes", "nodes", {"status": status, "region": region})
    if as_json:
        emit(rows)
        return
    for row in rows:
        row["functions"] = ",".join(f"{f['name']}@{f['version']}" for f in row["functions"])
    table(
        rows,
        [
            "id",
            "name",
            "region",
            "status",
            "current_schema_version",
            "functions",
            "last_heartbeat_at",
        ],
    )


@nodes.command("show")
@click.argument("node_id")
@click.option("--history", is_flag=True, help="Include the node's recent sync history.")
@api_command
def nodes_show(client: ApiClient, node_id: str, history: bool) -> None:
    """Show one node."""
    node = client.request("GET", f"/api/v1/nodes/{node_id}")
    if history:
        node["sync_history"] = client.request("GET", f"/api/v1/nodes/{node_id}/sync/history")[
            "records"
        ]
    emit(node)


# -- tokens ---------------------------------------------------------------------------


@click.group()
def token() -> None:
    """Enrollment tokens for new nodes."""


@token.command("create")
@click.option("--max-uses", default=1, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds until it expires.",
)
@click.option("--region", help="Region given to nodes that enroll with it.")
@api_command
def token_create(client: ApiClient, max_uses: int, ttl: int, region: str | None) -> None:
    """Create an enrollment token; prints it as JSON."""
    emit(
        client.request(
            "POST",
            "/api/v1/enrollment-tokens",
            {"max_uses": max_uses, "ttl_seconds": ttl, "region": region},
        )
    )


def _attach_pin_commands() -> None:
    # `nodes pin/unpin` live in their own module (this one stays small).
    from edgesync.commands.pins import nodes_pin, nodes_unpin

    nodes.add_command(nodes_pin)
    nodes.add_command(nodes_unpin)


_attach_pin_commands()
