"""The rollout and release commands' parsing and drawing (no server needed)."""

from __future__ import annotations

import pytest

from edgesync.commands.release import parse_function, release_diff
from edgesync.commands.rollout import parse_rate, parse_selector, parse_size, render
from edgesync.errors import EdgesyncError


def test_sizes_rates_and_selectors() -> None:
    assert parse_size("1") == 1 and parse_size("25%") == "25%"
    assert parse_rate("5%") == pytest.approx(0.05) and parse_rate("0.1") == pytest.approx(0.1)
    assert parse_selector(("region=eu", "tier=canary,node=n1")) == {
        "region": "eu",
        "labels": {"tier": "canary"},
        "node_ids": ["n1"],
    }
    for bad in (lambda: parse_size("lots"), lambda: parse_selector(("eu",))):
        with pytest.raises(EdgesyncError) as caught:
            bad()
        assert caught.value.code == "BAD_INPUT"
    assert parse_function("hello@1.2.0") == {"name": "hello", "version": "1.2.0"}
    with pytest.raises(EdgesyncError):
        parse_function("hello")


def test_a_bar_per_wave() -> None:
    rollout = {
        "id": "r",
        "release_id": "x",
        "state": "running",
        "failures": 0,
        "waves": [
            {
                "index": 0,
                "size": 1,
                "state": "done",
                "nodes": {"pending": 0, "applied": 1, "failed": 0},
            },
            {
                "index": 1,
                "size": 5,
                "state": "running",
                "nodes": {"pending": 2, "applied": 1, "failed": 1},
            },
        ],
    }
    lines = render(rollout)
    assert lines[1] == "  wave 1 [" + "#" * 30 + "] 1/1 done     applied 1 failed 0"
    assert lines[2] == "  wave 2 [" + "#" * 15 + "-" * 15 + "] 2/4 running  applied 1 failed 1"


def test_release_diff_names_every_change() -> None:
    before = {
        "schema_version": 1,
        "functions": [{"name": "a", "version": "1"}, {"name": "b", "version": "1"}],
    }
    after = {
        "schema_version": 2,
        "functions": [{"name": "a", "version": "2"}, {"name": "c", "version": "1"}],
    }
    assert release_diff(before, after) == ["schema 1 -> 2", "~ a 1 -> 2", "- b@1", "+ c@1"]
    assert release_diff(None, {"schema_version": 0, "functions": []}) == []
