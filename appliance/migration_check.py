"""Checking a schema migration before it is accepted.

The whole chain (every accepted migration, then the candidate) is applied to a
scratch in-memory libsql database, statement by statement — libsql's
``executescript`` swallows errors (NOTES.md) — with the same engine the agents
run, so a migration that cannot apply is refused at the door.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgesync.errors import InvalidMigration
from edgesync.sqlscript import forbidden_statement, split_statements


def check_chain(accepted: Sequence[str], candidate: str) -> None:
    """Raise :class:`InvalidMigration` unless ``candidate`` applies after ``accepted``."""
    statements = split_statements(candidate)
    if not statements:
        raise InvalidMigration(
            "up_sql holds no SQL statement", details={"sql_error": "empty migration"}
        )
    for index, statement in enumerate(statements):
        keyword = forbidden_statement(statement)
        if keyword is not None:
            raise InvalidMigration(
                f"migrations may not use {keyword}: the agent applies each release"
                " in one transaction inside the node's database file",
                details={"sql_error": f"{keyword} is not allowed", "statement_index": index},
            )
    connection = _scratch_connection()
    try:
        for script in accepted:
            for statement in split_statements(script):
                connection.execute(statement)
        for index, statement in enumerate(statements):
            try:
                connection.execute(statement)
            except Exception as exc:
                raise InvalidMigration(
                    "migration does not apply to the current schema",
                    details={"sql_error": str(exc)[:500], "statement_index": index},
                ) from exc
    finally:
        connection.close()


def _scratch_connection():  # type: ignore[no-untyped-def]
    try:
        import libsql

        return libsql.connect(":memory:")
    except ImportError:  # pragma: no cover - libsql ships in the zipapp
        import sqlite3

        return sqlite3.connect(":memory:")
