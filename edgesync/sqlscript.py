"""Split SQL scripts into statements.

Needed because libsql's ``executescript`` swallows errors (libsql-python#89): every
migration, on the control plane's scratch check and on the agent, runs statement
by statement through ``execute`` so that the first failure surfaces. What a
statement may do is decided by SQLite itself, never from its text here
(:mod:`edgesync.sqlguard`).

Where a statement ends is decided the way SQLite's own ``sqlite3_complete()``
decides it (``complete.c``): one tokenizing pass with its state machine, so a
``;`` inside a string literal, a quoted identifier, a comment or a trigger body
does not split, and a script of any size splits in linear time (asking
``sqlite3.complete_statement`` about every ``;`` is quadratic: a megabyte of
semicolons in one string literal took minutes).
"""

from __future__ import annotations

import re

# SQLite's tokens as sqlite3_complete() sees them. An unterminated block comment
# runs to the end of the script, as in SQLite's tokenizer; an unterminated quote
# too, but as code: executed, it fails ("unrecognized token").
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\n\f\r]+ | --[^\n]* | /\*.*?(?:\*/|\Z))
    | (?P<semi>;)
    | (?P<word>[A-Za-z0-9_$\x80-\U0010ffff]+)
    | (?P<other>'[^']*(?:'|\Z) | "[^"]*(?:"|\Z) | `[^`]*(?:`|\Z) | \[[^\]]*(?:\]|\Z) | .)
    """,
    re.VERBOSE | re.DOTALL,
)
_SEMI, _WS, _OTHER, _EXPLAIN, _CREATE, _TEMP, _TRIGGER, _END = range(8)
_KEYWORDS = {
    "explain": _EXPLAIN,
    "create": _CREATE,
    "temp": _TEMP,
    "temporary": _TEMP,
    "trigger": _TRIGGER,
    "end": _END,
}
# complete.c's transitions: _STATES[state][token]. State 1 is "between statements";
# 5-7 are inside CREATE TRIGGER … END, where a ';' does not end the statement.
_STATES = (
    (1, 0, 2, 3, 4, 2, 2, 2),  # 0 invalid
    (1, 1, 2, 3, 4, 2, 2, 2),  # 1 start
    (1, 2, 2, 2, 2, 2, 2, 2),  # 2 normal
    (1, 3, 3, 2, 4, 2, 2, 2),  # 3 explain
    (1, 4, 2, 2, 2, 4, 5, 2),  # 4 create
    (6, 5, 5, 5, 5, 5, 5, 5),  # 5 trigger
    (6, 6, 5, 5, 5, 5, 5, 7),  # 6 semi
    (1, 7, 5, 5, 5, 5, 5, 5),  # 7 end
)


def split_statements(script: str) -> list[str]:
    """Return the complete statements of ``script``, in order, each with its ``;``,
    without empties (whitespace, comments, lone semicolons). A trailing fragment
    that is not a complete statement is returned as-is and fails on execution."""
    statements: list[str] = []
    state, start, has_code = 1, 0, False
    for token in _TOKEN.finditer(script):
        kind = _kind(token)
        state = _STATES[state][kind]
        if kind not in (_WS, _SEMI):
            has_code = True
        if kind == _SEMI and state == 1:
            if has_code:
                statements.append(script[start : token.end()].strip())
            start, has_code = token.end(), False
    if has_code:
        statements.append(script[start:].strip())
    return statements


def bare_words(sql: str) -> set[str]:
    """The unquoted words of ``sql``, lowercased: keywords and plain identifiers,
    never what is inside a string literal, a quoted identifier or a comment."""
    return {token.group().lower() for token in _TOKEN.finditer(sql) if token.lastgroup == "word"}


def _kind(token: re.Match[str]) -> int:
    group = token.lastgroup
    if group == "ws":
        return _WS
    if group == "semi":
        return _SEMI
    if group == "word":
        word = token.group()
        return _KEYWORDS.get(word.lower(), _OTHER) if word.isascii() else _OTHER
    return _OTHER
