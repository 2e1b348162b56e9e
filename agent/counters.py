"""Per-function invocation and error counts, reported in the next heartbeat.

The control plane's rollouts gate a wave on the functions' own error rate
(docs/releases.md). Each gateway call is counted here, straight into the
agent's ``pending_report`` (the heartbeat body's extra fields): a non-zero
count is news, so the next interval sends a heartbeat with
``{"functions": {NAME: {"invocations": N, "errors": N}}}`` and starts over.
"""

from __future__ import annotations

from typing import Any, Protocol


class Reporter(Protocol):
    pending_report: dict[str, Any]


class FunctionCounters:
    """Counts into ``reporter.pending_report["functions"]`` (looked up on every call:
    the loop swaps in a fresh report each time it sends one)."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter

    def count(self, name: str, *, failed: bool) -> None:
        functions = self._reporter.pending_report.setdefault("functions", {})
        entry = functions.setdefault(name, {"invocations": 0, "errors": 0})
        entry["invocations"] += 1
        if failed:
            entry["errors"] += 1


def put_back(pending: dict[str, Any], unsent: dict[str, Any]) -> None:
    """Return a heartbeat body that could not be delivered to ``pending``.

    Calls counted while it was in flight are already in ``pending``: counters are
    added together, so no invocation or error is lost or counted twice; any other
    field keeps its newer value.
    """
    for key, value in unsent.items():
        if key != "functions":
            pending.setdefault(key, value)
            continue
        functions = pending.setdefault("functions", {})
        for name, counts in value.items():
            entry = functions.setdefault(name, {"invocations": 0, "errors": 0})
            entry["invocations"] += counts["invocations"]
            entry["errors"] += counts["errors"]
