"""Function counters survive a heartbeat that could not be delivered."""

from __future__ import annotations

from typing import Any

from agent.counters import FunctionCounters, put_back


class Reporter:
    def __init__(self) -> None:
        self.pending_report: dict[str, Any] = {}


def test_an_undelivered_report_is_added_to_what_was_counted_meanwhile() -> None:
    agent = Reporter()
    counters = FunctionCounters(agent)
    counters.count("hello", failed=False)
    counters.count("hello", failed=True)
    counters.count("echo", failed=False)
    # The loop takes the report to send it ...
    report, agent.pending_report = agent.pending_report, {}
    # ... calls go on while the heartbeat is in flight ...
    counters.count("hello", failed=True)
    counters.count("new", failed=False)
    # ... and it fails: nothing is lost, nothing counted twice.
    put_back(agent.pending_report, report)
    assert agent.pending_report["functions"] == {
        "hello": {"invocations": 3, "errors": 2},
        "echo": {"invocations": 1, "errors": 0},
        "new": {"invocations": 1, "errors": 0},
    }


def test_other_fields_keep_their_newer_value() -> None:
    pending: dict[str, Any] = {"note": "new"}
    put_back(pending, {"note": "old", "other": 1})
    assert pending == {"note": "new", "other": 1}
