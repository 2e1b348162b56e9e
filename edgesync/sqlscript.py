"""Split SQL scripts into statements.

Needed because libsql's ``executescript`` swallows errors (NOTES.md): every
migration, on the control plane's scratch check and on the agent, runs statement
by statement through ``execute`` so that the first failure surfaces. What a
statement may do is decided by SQLite itself, never from its text here
(:mod:`edgesync.sqlguard`).
"""

from __future__ import annotations

import sqlite3


def split_statements(script: str) -> list[str]:
    """Return the complete statements of ``script``, in order, without empties.

    ``sqlite3.complete_statement`` knows about string literals, comments and
    trigger bodies, so a ``;`` inside them does not split. A trailing fragment
    that is not a complete statement is returned as-is and fails on execution.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        while True:
            cut = _first_complete_prefix(buffer)
            if cut is None:
                break
            statement, buffer = buffer[:cut].strip(), buffer[cut:]
            if _has_code(statement):
                statements.append(statement)
    if _has_code(buffer):
        statements.append(buffer.strip())
    return statements


def _first_complete_prefix(text: str) -> int | None:
    position = text.find(";")
    while position != -1:
        if sqlite3.complete_statement(text[: position + 1]):
            return position + 1
        position = text.find(";", position + 1)
    return None


def _has_code(statement: str) -> bool:
    """False for whitespace, lone semicolons and comment-only fragments."""
    lines = []
    for line in statement.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            lines.append(stripped)
    text = " ".join(lines)
    while text.startswith("/*") and "*/" in text:
        text = text[text.index("*/") + 2 :].strip()
    return bool(text.strip().strip(";").strip())
