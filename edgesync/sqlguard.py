"""The rules migration SQL runs under, enforced by SQLite itself.

A migration is application schema for one database file, applied inside the
agent's release transaction. SQLite's authorizer (``set_authorizer``) sees every
action a statement would take, after parsing, whatever comments or spelling
hide it; :class:`MigrationRules` refuses the ones that would reach outside that
file or that transaction:

* ATTACH, DETACH and VACUUM (it attaches a scratch copy, or writes one
  elsewhere), and ``SQLITE_LIMIT_ATTACHED`` is 0 besides: no other database
  file is ever opened, read or created. (VACUUM is refused from its compiled
  program by :mod:`edgesync.sqlrunner` before the authorizer would see it.)
* every transaction and savepoint statement: a release commits whole or not at all.
* PRAGMA, except a few that only read the schema: pragmas change the connection
  (``foreign_keys``), the file (``journal_mode``, ``user_version``) or rewrite the
  schema behind SQLite's back (``writable_schema``).
* ``load_extension`` (native code) and the few other functions that touch
  memory or files (``fts3_tokenizer`` takes a pointer).
* temporary objects: they live in the agent's connection, not in the file, so a
  node's schema would depend on when it last restarted.
* the agent's bookkeeping (``_edgesync_*``): the node's recorded state is the
  agent's to write.

Only the stdlib ``sqlite3`` offers an authorizer (libsql 0.1 does not);
the agent on libsql proves a plan under these rules on a stdlib copy of its
schema first (:mod:`edgesync.sqlrunner`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

RESERVED_PREFIX = "_edgesync_"

# Pragmas that only read; FTS5 itself runs ``PRAGMA data_version``.
READ_ONLY_PRAGMAS = frozenset(
    {
        "data_version",
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "table_info",
        "table_xinfo",
    }
)
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})

_OUTSIDE_THE_FILE = "reaches outside the node's database file"
_ENDS_THE_RELEASE = "would end or nest the release's transaction"
# Each rule's name (details.rule) and why it exists (in the error's message).
WHY = {
    "ATTACH": f"ATTACH {_OUTSIDE_THE_FILE}",
    "DETACH": f"DETACH {_OUTSIDE_THE_FILE}",
    "VACUUM": f"VACUUM (it attaches a copy, or writes one elsewhere) {_OUTSIDE_THE_FILE}",
    "TRANSACTION": f"transaction control {_ENDS_THE_RELEASE}",
    "SAVEPOINT": f"a savepoint {_ENDS_THE_RELEASE}",
    "PRAGMA": "pragmas change the connection or the file",
    "FUNCTION": f"the function {_OUTSIDE_THE_FILE}",
    "TEMP": "temporary objects outlive the release outside the file",
    "RESERVED": f"{RESERVED_PREFIX}* objects are the agent's bookkeeping",
}
_DENIED_ACTIONS = {
    sqlite3.SQLITE_ATTACH: "ATTACH",  # VACUUM too: it attaches its scratch copy
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_TRANSACTION: "TRANSACTION",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT",
}
_TEMPORARY_OBJECTS = {
    sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE,
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TRIGGER,
    sqlite3.SQLITE_DROP_TEMP_VIEW,
}
# ``CREATE TABLE temp.x`` is a CREATE_TABLE in database "temp", not a CREATE_TEMP_TABLE.
_CREATIONS = {
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_CREATE_VTABLE,
}
# Actions whose second argument is a column or module, not a table or index.
_SECOND_NAME_IS_NO_OBJECT = {
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_CREATE_VTABLE,
    sqlite3.SQLITE_DROP_VTABLE,
}


class MigrationRules:
    """An authorizer callback that records why it refused the last statement.

    ``deadline_seconds`` (optional) also stops any statement that runs longer,
    through SQLite's progress handler: for checks that run inside a process that
    cannot simply be killed (the agent's dry run).
    """

    def __init__(self, deadline_seconds: float | None = None) -> None:
        self.deadline_seconds = deadline_seconds
        self.refusal: tuple[str, str] | None = None  # (rule, why)
        self.timed_out = False
        self._deadline = 0.0

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, database: str | None, _: str | None
    ) -> int:
        refusal = self._judge(action, arg1, arg2, database)
        if refusal is None:
            return sqlite3.SQLITE_OK
        self.refusal = refusal
        return sqlite3.SQLITE_DENY

    def _judge(
        self, action: int, arg1: str | None, arg2: str | None, database: str | None
    ) -> tuple[str, str] | None:
        if action in _DENIED_ACTIONS:
            return _refusal(_DENIED_ACTIONS[action])
        if action == sqlite3.SQLITE_PRAGMA:
            pragma = (arg1 or "").lower()
            if pragma in READ_ONLY_PRAGMAS:
                return None
            return ("PRAGMA", f"PRAGMA {pragma}: {WHY['PRAGMA']}")
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
            return ("FUNCTION", f"{(arg2 or '').lower()}(): {WHY['FUNCTION']}")
        if action in _TEMPORARY_OBJECTS or (action in _CREATIONS and database == "temp"):
            return _refusal("TEMP")
        if action == sqlite3.SQLITE_ANALYZE:
            return None  # statistics for every table, bookkeeping included: no content
        names = (arg1,) if action in _SECOND_NAME_IS_NO_OBJECT else (arg1, arg2)
        if any(n and n.lower().startswith(RESERVED_PREFIX) for n in names):
            return _refusal("RESERVED")
        return None

    def reset(self) -> None:
        """Forget the last refusal and restart the deadline: call before each statement."""
        self.refusal = None
        self.timed_out = False
        self._deadline = time.monotonic() + (self.deadline_seconds or 0.0)

    def _over_time(self) -> int:
        if time.monotonic() > self._deadline:
            self.timed_out = True
            return 1  # non-zero: SQLite interrupts the statement
        return 0

    @contextmanager
    def installed(self, connection: sqlite3.Connection) -> Iterator[MigrationRules]:
        """These rules on ``connection`` for the block, none after it.

        Setting an authorizer expires every prepared statement, so nothing the
        connection prepared before runs unchecked; ATTACH stays impossible after
        the block too (the limit is never raised again).
        """
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        connection.set_authorizer(self)
        if self.deadline_seconds is not None:
            connection.set_progress_handler(self._over_time, 10_000)
        try:
            yield self
        finally:
            connection.set_authorizer(None)
            connection.set_progress_handler(None, 0)


def _refusal(rule: str) -> tuple[str, str]:
    return (rule, WHY[rule])
