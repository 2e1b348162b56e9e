"""The destructive-change lint of a migration's ``up_sql`` (docs/protocol.md, "Migration lint").

A migration reaches every node of a release; one that drops or rewrites data
cannot be taken back by its ``down_sql`` (the data is gone). So ``POST
/api/v1/schemas`` refuses these unless the body says ``allow_destructive``:

* every ``DROP`` (TABLE, VIEW, INDEX, TRIGGER) and ``ALTER TABLE … DROP COLUMN``.
  A dropped view, index or trigger loses no row, but it is behaviour the
  deployed functions rely on (their queries, their speed, their writes'
  side effects), so all drops are treated alike;
* ``ALTER TABLE … RENAME TO`` (a table rename): every function naming the table breaks;
* ``DELETE`` or ``UPDATE`` without ``WHERE`` (``WHERE 1`` is an explicit choice: allowed),
  at the top level, after a ``WITH``, and inside a trigger body, where it would
  empty or rewrite a table each time the trigger fires;
* a statement the parser does not understand: it cannot be shown harmless, so
  it needs ``allow_destructive`` too (fail closed). Trigger bodies are parsed
  statement by statement; a trigger whose body cannot be located counts as not
  understood.

``ALTER TABLE … RENAME COLUMN`` is not destructive: no data is lost and its
``down_sql`` renames it back; functions of the previous release that name the
old column do break, which is why a schema and the functions that need it
ship as one release.

Statements are split as SQLite splits them (:func:`edgesync.sqlscript.split_statements`),
so ``index`` is the same statement index an ``INVALID_MIGRATION`` names. In SQLite's
grammar nothing above can be written without one of the keywords DROP, DELETE, UPDATE
or ALTER, so only a statement holding one of them as a bare word (not in a string, a
quoted name or a comment) is parsed, by sqlglot's SQLite dialect (imported on first
use: it is large): a megabyte of seed ``INSERT`` statements costs a tokenizing pass,
not a parse (about 5 s of the check's default 10).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgesync.sqlscript import bare_words, split_statements

if TYPE_CHECKING:
    from sqlglot import exp

STATEMENT_LIMIT = 200  # characters of a statement quoted back in details.statements
# How sqlglot names a token in its messages; the reason quotes the token's text only.
_TOKEN_REPR = re.compile(r"<Token token_type: [^,]*, text: (.*?), line: .*?>")
# A destructive statement holds at least one of these keywords (see above).
DESTRUCTIVE_KEYWORDS = frozenset({"drop", "delete", "update", "alter"})


@dataclass(frozen=True)
class Finding:
    """One destructive statement: where it is, what it is, and why it is refused."""

    index: int
    statement: str
    kind: str  # drop, drop_column, rename_table, delete_without_where, ...
    reason: str

    def to_dict(self) -> dict[str, Any]:
        text = " ".join(self.statement.split())
        if len(text) > STATEMENT_LIMIT:
            text = text[: STATEMENT_LIMIT - 1] + "…"
        return {"index": self.index, "statement": text, "kind": self.kind, "reason": self.reason}


def lint(up_sql: str) -> list[Finding]:
    """The destructive statements of ``up_sql``, in order (empty: nothing to refuse)."""
    findings: list[Finding] = []
    for index, statement in enumerate(split_statements(up_sql)):
        for kind, reason in _judge_statement(statement):
            findings.append(Finding(index, statement, kind, reason))
    return findings


def _judge_statement(statement: str) -> list[tuple[str, str]]:
    if not bare_words(statement) & DESTRUCTIVE_KEYWORDS:
        return []
    body = _trigger_body(statement)
    if body is not None:
        if body == "":
            return [("not_understood", "the trigger's body could not be located by the lint")]
        return [
            (kind, f"in the trigger's body: {reason}")
            for inner in split_statements(body)
            for kind, reason in _judge_parsed(inner)
        ]
    return _judge_parsed(statement)


def _judge_parsed(statement: str) -> list[tuple[str, str]]:
    import sqlglot

    try:
        trees = [tree for tree in _parse(statement) if tree is not None]
    except MemoryError:
        raise
    except Exception as exc:  # ParseError, and RecursionError on deep nesting: fail closed
        lines = str(exc).splitlines() if isinstance(exc, sqlglot.errors.SqlglotError) else []
        first = _TOKEN_REPR.sub(r"'\1'", lines[0]).split(". Line ")[0] if lines else ""
        why = first[:120].rstrip(". ") or type(exc).__name__
        return [("not_understood", f"the lint's SQL parser cannot read it ({why})")]
    return [
        verdict
        for tree in trees
        for node in tree.walk()
        if (verdict := _judge_node(node)) is not None
    ]


def _parse(statement: str) -> list[exp.Expr | None]:
    import sqlglot

    # sqlglot logs a warning for every statement it keeps as an opaque Command;
    # the lint reports those itself.
    parser_log = logging.getLogger("sqlglot")
    previous = parser_log.level
    parser_log.setLevel(logging.ERROR)
    try:
        return sqlglot.parse(statement, read="sqlite", error_level=sqlglot.ErrorLevel.RAISE)
    finally:
        parser_log.setLevel(previous)


def _judge_node(node: exp.Expr) -> tuple[str, str] | None:
    from sqlglot import exp

    if isinstance(node, exp.Command):  # sqlglot's fallback: a part it kept as text
        verb = str(node.this).upper()
        if verb == "DROP" and isinstance(node.parent, exp.Alter):  # DROP without COLUMN
            return ("drop_column", "DROP COLUMN deletes the column's data")
        return ("not_understood", f"the lint's SQL parser does not know {verb} here")
    if isinstance(node, exp.Drop):
        kind = str(node.args.get("kind") or "").upper()
        if kind == "COLUMN":
            return ("drop_column", "DROP COLUMN deletes the column's data")
        what = kind or "object"
        return ("drop", f"DROP {what} removes what the deployed functions use")
    if isinstance(node, exp.AlterRename):
        return ("rename_table", "a table rename breaks every function that names the table")
    if isinstance(node, exp.Delete) and node.args.get("where") is None:
        return ("delete_without_where", "DELETE without WHERE removes every row")
    if isinstance(node, exp.Update) and node.args.get("where") is None:
        return ("update_without_where", "UPDATE without WHERE rewrites every row")
    return None


def _trigger_body(statement: str) -> str | None:
    """The text between ``BEGIN`` and the final ``END`` of a CREATE TRIGGER, None
    for any other statement, "" for a trigger whose body cannot be located."""
    import sqlglot
    from sqlglot.tokens import TokenType

    try:
        tokens = sqlglot.Dialect.get_or_raise("sqlite").tokenize(statement)
    except sqlglot.errors.SqlglotError:
        return None  # not tokenizable: the parser reports it as not understood
    head = [t.token_type for t in tokens[:3] if t.token_type != TokenType.TEMPORARY]
    if head[:2] != [TokenType.CREATE, TokenType.TRIGGER]:
        return None
    begins = [t for t in tokens if t.token_type == TokenType.BEGIN]
    ends = [t for t in tokens if t.token_type == TokenType.END]
    if not begins or not ends or ends[-1].start < begins[0].end:
        return ""
    body = statement[begins[0].end + 1 : ends[-1].start]
    return body if body.strip() else ""
