"""The child process that checks a migration chain: ``python -m appliance.migration_sandbox``.

Started by :mod:`appliance.migration_check` for every proposed migration, so
that the SQL an admin sends runs nowhere near the server's own database, its
event loop or its memory. It first limits itself (address space, no file
writes, CPU time as a backstop behind the parent's wall-clock kill), then reads
``{"chain": [[version, sql], ...], "down_sql": null | "...", "lint": bool}`` from
stdin and writes one JSON line: ``{"ok": true, "destructive": [...]}`` or
``{"error": {"message": ..., "details": {...}}}``.

The chain runs twice: under :class:`~edgesync.sqlguard.MigrationRules` on the
stdlib ``sqlite3`` (the rules need its authorizer), then — only once that pass
has proved it harmless — on libsql, the agents' engine, so that "it applies"
also holds where it will really run. With a ``down_sql`` for the last migration
each pass is up (the chain), down, then up again (phases ``up``, ``down``,
``up_again`` in a failure's details): going back and forth must work too.

With ``lint``, the last migration's ``up_sql`` is then linted for destructive
statements (:mod:`appliance.migration_lint`) here as well: parsing a megabyte of
SQL is work for a child with limits, not for the server's event loop.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

from edgesync.sqlguard import MigrationRules
from edgesync.sqlrunner import ScriptFailed, run_chain, scratch_database

Chain = Sequence[tuple[int, str]]


def verify_chain(chain: Chain, down_sql: str | None = None) -> None:
    """Raise :class:`ScriptFailed` unless every migration of ``chain`` applies, in
    order, to an empty database, within the migration rules, on both engines; with
    ``down_sql`` (the last migration's), down and then up again must apply too."""
    with scratch_database([]) as (connection, rules):
        _run_phases(connection, chain, down_sql, rules)
    _apply_on_libsql(chain, down_sql)


def _run_phases(
    connection: Any, chain: Chain, down_sql: str | None, rules: MigrationRules | None
) -> None:
    if down_sql is None:
        run_chain(connection, chain, rules=rules)
        return
    version, up_sql = chain[-1]
    run_chain(connection, chain, rules=rules, phase="up")
    run_chain(connection, [(version, down_sql)], rules=rules, phase="down")
    run_chain(connection, [(version, up_sql)], rules=rules, phase="up_again")


def _apply_on_libsql(chain: Chain, down_sql: str | None) -> None:
    try:
        import libsql
    except ImportError:  # an install without libsql: its agents use the stdlib sqlite3
        return
    connection = libsql.connect(":memory:")
    try:
        connection.execute("BEGIN")
        # No authorizer here: the runner checks after each statement.
        _run_phases(connection, chain, down_sql, None)
        connection.rollback()
    finally:
        connection.close()


def destructive_statements(up_sql: str) -> list[dict[str, Any]]:
    """``details.statements`` of a DESTRUCTIVE_MIGRATION: the lint's findings."""
    from appliance.migration_lint import lint

    return [finding.to_dict() for finding in lint(up_sql)]


def limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # It writes no file: a write() gives EFBIG (SIGXFSZ ignored) instead of a file.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _verdict(chain: Chain, down_sql: str | None, lint: bool) -> dict[str, object]:
    try:
        verify_chain(chain, down_sql)
        destructive = destructive_statements(chain[-1][1]) if lint and chain else []
    except ScriptFailed as failure:
        return {"error": {"message": failure.message, "details": failure.details}}
    except MemoryError:
        return {
            "error": {
                "message": "the migration check ran out of memory",
                "details": {"reason": "memory", "sql_error": "out of memory"},
            }
        }
    return {"ok": True, "destructive": destructive}


def main(argv: list[str]) -> int:
    limit_resources(int(argv[0]), int(argv[1]))
    body = json.loads(sys.stdin.buffer.read())
    chain = [(int(version), str(sql)) for version, sql in body["chain"]]
    down_sql = body.get("down_sql")
    verdict = _verdict(chain, None if down_sql is None else str(down_sql), bool(body.get("lint")))
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
