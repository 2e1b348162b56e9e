"""The child process that checks a migration chain: ``python -m appliance.migration_sandbox``.

Started by :mod:`appliance.migration_check` for every proposed migration, so
that the SQL an admin sends runs nowhere near the server's own database, its
event loop or its memory. It first limits itself (address space, no file
writes, CPU time as a backstop behind the parent's wall-clock kill), then reads
``{"chain": [[version, sql], ...]}`` from stdin and writes one JSON line:
``{"ok": true}`` or ``{"error": {"message": ..., "details": {...}}}``.

The chain runs twice: under :class:`~edgesync.sqlguard.MigrationRules` on the
stdlib ``sqlite3`` (the rules need its authorizer), then — only once that pass
has proved it harmless — on libsql, the agents' engine, so that "it applies"
also holds where it will really run.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from collections.abc import Sequence

from edgesync.sqlrunner import ScriptFailed, dry_run, run_chain

Chain = Sequence[tuple[int, str]]


def verify_chain(chain: Chain) -> None:
    """Raise :class:`ScriptFailed` unless every migration of ``chain`` applies, in
    order, to an empty database, within the migration rules, on both engines."""
    dry_run([], chain)
    _apply_on_libsql(chain)


def _apply_on_libsql(chain: Chain) -> None:
    try:
        import libsql
    except ImportError:  # an install without libsql: its agents use the stdlib sqlite3
        return
    connection = libsql.connect(":memory:")
    try:
        connection.execute("BEGIN")
        run_chain(connection, chain)  # no authorizer here: the runner checks after each statement
        connection.rollback()
    finally:
        connection.close()


def limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # It writes no file: a write() gives EFBIG (SIGXFSZ ignored) instead of a file.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _verdict(chain: Chain) -> dict[str, object]:
    try:
        verify_chain(chain)
    except ScriptFailed as failure:
        return {"error": {"message": failure.message, "details": failure.details}}
    except MemoryError:
        return {
            "error": {
                "message": "the migration check ran out of memory",
                "details": {"reason": "memory", "sql_error": "out of memory"},
            }
        }
    return {"ok": True}


def _read_chain(data: bytes) -> list[tuple[int, str]]:
    body = json.loads(data)
    return [(int(version), str(sql)) for version, sql in body["chain"]]


def main(argv: list[str]) -> int:
    limit_resources(int(argv[0]), int(argv[1]))
    verdict = _verdict(_read_chain(sys.stdin.buffer.read()))
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
