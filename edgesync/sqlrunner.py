"""Running migration SQL: one runner for the control plane's check and the agent's apply.

Statement by statement (libsql's ``executescript`` swallows errors, libsql-python#89),
draining every row (libsql steps a ``SELECT`` lazily: an error in its rows only
surfaces when they are fetched), under :class:`~edgesync.sqlguard.MigrationRules`
where the engine has an authorizer. On an engine without one (libsql) the
runner checks after every statement what the rules would have prevented: that
the caller's transaction is still open, that no other database is attached and
that no temporary object was made. On both, before every statement it reads
the statement's compiled program (``EXPLAIN``) and refuses one that would end
the transaction, take a savepoint, vacuum, attach or load an extension, so that
those never run at all. Failures come out as :class:`ScriptFailed`, which each
side turns into its own error code.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from edgesync.sqlguard import WHY, MigrationRules
from edgesync.sqlscript import split_statements

SQL_ERROR_LIMIT = 300
_BATCH = 256

# What an engine without an authorizer is checked for, in a statement's program.
_FORBIDDEN_OPCODES = {"AutoCommit": "TRANSACTION", "Savepoint": "SAVEPOINT", "Vacuum": "VACUUM"}
_FORBIDDEN_CALLS = {
    "sqlite_attach": "ATTACH",
    "sqlite_detach": "DETACH",
    "load_extension": "FUNCTION",
    "fts3_tokenizer": "FUNCTION",
}


class ScriptFailed(Exception):
    """A migration statement failed or was refused.

    ``reason``: ``sql_error`` (SQLite's own error), ``refused`` (a rule; ``rule``
    names it), ``timeout``,
    ``memory``, ``empty`` (no statement) or ``schema`` (the node's schema could
    not be copied for a dry run).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        sql_error: str,
        statement_index: int | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message)
        self.problem = message
        self.reason = reason
        self.sql_error = sql_error[:SQL_ERROR_LIMIT]
        self.statement_index = statement_index
        self.rule = rule
        self.version: int | None = None  # set by whoever knows which migration ran
        self.phase: str | None = None  # which pass of a chain: up, down, revert, ...

    @property
    def message(self) -> str:
        """What failed, naming the migration (and the pass over it) when known."""
        where = f"migration {self.version}" if self.version else ""
        if self.phase is not None:
            where = f"{where} ({self.phase})".strip()
        return f"{where}: {self.problem}" if where else self.problem

    def __str__(self) -> str:
        return self.message

    @property
    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"reason": self.reason, "sql_error": self.sql_error}
        for key in ("version", "phase", "statement_index", "rule"):
            if getattr(self, key) is not None:
                details[key] = getattr(self, key)
        return details


def run_script(connection: Any, script: str, *, rules: MigrationRules | None = None) -> int:
    """Execute ``script`` inside the transaction ``connection`` is in; return the
    number of statements. ``rules`` must be installed on ``connection`` already
    (:meth:`MigrationRules.installed`); None means the engine has no authorizer."""
    if not connection.in_transaction:
        raise RuntimeError("run_script needs a transaction to run in")
    statements = split_statements(script)
    if not statements:
        raise ScriptFailed(
            "the migration holds no SQL statement", reason="empty", sql_error="empty migration"
        )
    for index, statement in enumerate(statements):
        _execute(connection, statement, index, rules)
        _check_contained(connection, index, engine_enforced=rules is not None)
    return len(statements)


def _execute(connection: Any, statement: str, index: int, rules: MigrationRules | None) -> None:
    if rules is not None:
        rules.reset()
    try:
        _check_program(connection, statement, index)
        cursor = connection.execute(statement)
        while cursor.fetchmany(_BATCH):  # libsql answers None for statements without rows
            pass
    except ScriptFailed:
        raise
    except MemoryError as exc:
        raise ScriptFailed(
            f"statement {index} ran out of memory",
            reason="memory",
            sql_error="out of memory",
            statement_index=index,
        ) from exc
    except Exception as exc:  # sqlite3.Error, libsql's ValueError
        raise _failure(exc, index, rules) from exc


def _check_program(connection: Any, statement: str, index: int) -> None:
    """Refuse ``statement`` if its compiled program holds a forbidden instruction.

    Compiling under ``EXPLAIN`` runs nothing; a statement that does not compile
    fails here with SQLite's own message, as executing it would (fail closed).
    Under an authorizer this is a second look; without one, the first.
    """
    for row in connection.execute(f"EXPLAIN {statement}").fetchall():
        opcode, p4 = str(row[1]), str(row[5])
        rule = _FORBIDDEN_OPCODES.get(opcode)
        if rule is None and opcode.startswith(("Function", "PureFunc")):  # also *0 (older)
            rule = _FORBIDDEN_CALLS.get(p4.split("(", 1)[0].lower())
        if rule is not None:
            raise ScriptFailed(
                f"statement {index} is not allowed in a migration: {WHY[rule]}",
                reason="refused",
                sql_error=f"not authorized: {WHY[rule]}",
                statement_index=index,
                rule=rule,
            )


def _failure(exc: Exception, index: int, rules: MigrationRules | None) -> ScriptFailed:
    if rules is not None and rules.refusal is not None:
        rule, why = rules.refusal
        return ScriptFailed(
            f"statement {index} is not allowed in a migration: {why}",
            reason="refused",
            sql_error=f"not authorized: {why}",
            statement_index=index,
            rule=rule,
        )
    if rules is not None and rules.timed_out:
        return ScriptFailed(
            f"statement {index} ran longer than {rules.deadline_seconds:g} s",
            reason="timeout",
            sql_error="interrupted: time limit",
            statement_index=index,
        )
    text = str(exc)
    reason = "memory" if "out of memory" in text.lower() else "sql_error"
    return ScriptFailed(
        f"statement {index} failed: {text[:SQL_ERROR_LIMIT]}",
        reason=reason,
        sql_error=text,
        statement_index=index,
    )


def _check_contained(connection: Any, index: int, *, engine_enforced: bool) -> None:
    if not connection.in_transaction:
        raise ScriptFailed(
            f"statement {index} ended the release's transaction: {WHY['TRANSACTION']}",
            reason="refused",
            sql_error=f"not authorized: {WHY['TRANSACTION']}",
            statement_index=index,
            rule="TRANSACTION",
        )
    if engine_enforced:
        return  # the authorizer refused these before they could happen
    databases = {row[1] for row in connection.execute("PRAGMA database_list").fetchall()}
    if databases - {"main", "temp"}:
        raise ScriptFailed(
            f"statement {index} attached another database: {WHY['ATTACH']}",
            reason="refused",
            sql_error=f"not authorized: {WHY['ATTACH']}",
            statement_index=index,
            rule="ATTACH",
        )
    if connection.execute("SELECT 1 FROM temp.sqlite_master").fetchall():
        raise ScriptFailed(
            f"statement {index} made a temporary object: {WHY['TEMP']}",
            reason="refused",
            sql_error=f"not authorized: {WHY['TEMP']}",
            statement_index=index,
            rule="TEMP",
        )


def dry_run(
    schema: Sequence[tuple[str, str]],
    migrations: Sequence[tuple[int, str]],
    *,
    deadline_seconds: float | None = None,
    reverts: Sequence[tuple[int, str]] = (),
) -> None:
    """Apply ``reverts`` ((version, down_sql), phase ``revert``), then ``migrations``
    ((version, up_sql), phase ``apply`` when there were reverts), in order, under
    :class:`MigrationRules` to a stdlib in-memory database that first gets ``schema``
    ((name, sql) rows of ``sqlite_master``, no data). Raises :class:`ScriptFailed`
    with ``version`` set. Nothing but that scratch database is ever opened."""
    with scratch_database(schema, deadline_seconds=deadline_seconds) as (connection, rules):
        run_chain(connection, reverts, rules=rules, phase="revert")
        run_chain(connection, migrations, rules=rules, phase="apply" if reverts else None)


@contextmanager
def scratch_database(
    schema: Sequence[tuple[str, str]], *, deadline_seconds: float | None = None
) -> Iterator[tuple[sqlite3.Connection, MigrationRules]]:
    """A stdlib in-memory database holding ``schema``, in a transaction, with
    :class:`MigrationRules` installed; rolled back and closed after the block."""
    connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        connection.execute("PRAGMA temp_store = MEMORY")  # no temp files: sorts count as memory
        connection.execute("BEGIN")  # one transaction for the copy and the migrations
        _copy_schema(connection, schema)
        rules = MigrationRules(deadline_seconds)
        with rules.installed(connection):
            yield connection, rules
        connection.rollback()
    finally:
        connection.close()


def run_chain(
    connection: Any,
    migrations: Sequence[tuple[int, str]],
    *,
    rules: MigrationRules | None = None,
    phase: str | None = None,
) -> None:
    """:func:`run_script` for each (version, sql) in order; failures name their
    version (and ``phase``, when given)."""
    for version, script in migrations:
        try:
            run_script(connection, script, rules=rules)
        except ScriptFailed as failure:
            failure.version = version
            failure.phase = phase
            raise


def _copy_schema(connection: sqlite3.Connection, schema: Sequence[tuple[str, str]]) -> None:
    for name, sql in schema:
        # A virtual table makes its shadow tables itself; they follow it in sqlite_master.
        if connection.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone():
            continue
        try:
            connection.execute(sql)
        except sqlite3.Error as exc:
            raise ScriptFailed(
                f"the node's schema object {name!r} cannot be copied for the dry run: {exc}",
                reason="schema",
                sql_error=str(exc),
            ) from exc
