"""Bounds on what a node may report, checked before any database work.

A node's state lists one entry per function name it runs, and a heartbeat's
per-function counters as many: no fleet comes near the limit, and a report
beyond it would hold the database's write lock for seconds (22,000 fake
functions in one ack took 1.8 s before this bound).
"""

from __future__ import annotations

from typing import Any

from edgesync.errors import ValidationFailed

MAX_NODE_FUNCTIONS = 1000


def refuse_too_many(body: Any, path: tuple[str, ...], field: str) -> None:
    """400 ``VALIDATION_FAILED`` when ``body[path...]`` (a list or an object) is too long."""
    value = body
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, (list, dict)) and len(value) > MAX_NODE_FUNCTIONS:
        raise ValidationFailed(
            f"{field} may list at most {MAX_NODE_FUNCTIONS} functions",
            details={"field": field, "max_items": MAX_NODE_FUNCTIONS},
        )
