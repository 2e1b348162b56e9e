"""``edgesync migrate``: bring the control-plane database to the current schema, then exit.

Run once per upgrade (the k3s migrate Job) before the replicas start, so that
no replica's startup waits on the migration lock. ``edgesync serve`` migrates
too, so running this is optional; it is safe alongside running replicas.
"""

from __future__ import annotations

import asyncio
import logging

import click


@click.command()
@click.option(
    "--database-url",
    envvar=["EDGESYNC_DATABASE_URL", "DATABASE_URL"],
    required=True,
    help="postgresql://… (CockroachDB/PostgreSQL) or sqlite:///path.",
)
@click.option(
    "--wait",
    default=900.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    help="Seconds to wait for another replica holding the migration lock.",
)
def migrate(database_url: str, wait: float) -> None:
    """Apply pending control-plane migrations and print the schema version."""
    # The pool's own warnings repeat each failed connection attempt; the one
    # error line below says what went wrong.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    from appliance.store.db import DatabaseError
    from appliance.store.migrate import migrate_database
    from edgesync.errors import EdgesyncError

    try:
        version = asyncio.run(migrate_database(database_url, wait=wait))
    except DatabaseError as exc:
        # The messages name host and user at most, never the URL's password.
        raise EdgesyncError(f"metadata database: {exc}", code="DATABASE_UNAVAILABLE") from exc
    click.echo(f"control-plane schema at version {version}")
