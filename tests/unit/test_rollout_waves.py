"""Rollout settings, waves, failure budgets and selection: the pure rules."""

from __future__ import annotations

import pytest

from appliance.rollouts.selection import Candidate, select
from appliance.rollouts.waves import over_budget, parse_settings, wave_sizes
from edgesync.errors import ValidationFailed


def test_defaults_follow_the_contract() -> None:
    settings = parse_settings({"release_id": "r"})
    assert settings.waves == ("100%",) and settings.max_failures == 0
    assert (settings.wave_timeout_seconds, settings.observe_seconds) == (900, 0)
    assert settings.max_function_error_rate is None
    assert settings.auto_rollback and not settings.allow_irreversible
    assert settings.selector == {}


def test_waves_are_cumulative_and_percentages_round_up() -> None:
    assert wave_sizes((1, "25%", "100%"), 40) == [1, 10, 40]
    assert wave_sizes((1, "10%", "100%"), 3) == [1, 1, 3]
    assert wave_sizes((5, "100%"), 2) == [2, 2]  # a count beyond the selection is capped
    with pytest.raises(ValidationFailed):
        wave_sizes((1, 2), 5)  # the last wave must cover everyone


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"release_id": "r", "waves": []},
        {"release_id": "r", "waves": ["x%"]},
        {"release_id": "r", "waves": [1, "50%"]},
        {"release_id": "r", "max_failures": -1},
        {"release_id": "r", "max_function_error_rate": 2},
        {"release_id": "r", "auto_rollback": "yes"},
        {"release_id": "r", "selector": {"zone": "a"}},
        {"release_id": "r", "selector": {"labels": {"k": 1}}},
    ],
)
def test_bad_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationFailed):
        parse_settings(body)


def test_failure_budget_is_a_count_or_a_share_of_nodes_given() -> None:
    assert not over_budget(0, 1, 0) and over_budget(1, 1, 0)
    assert not over_budget(1, 10, "10%") and over_budget(2, 10, "10%")
    assert not over_budget(1, 1, "10%")  # 10 % of one node rounds up to one


def test_selection_matches_every_key_skips_pins_and_orders_by_id() -> None:
    nodes = [
        Candidate("c", "eu", {"tier": "canary"}, False),
        Candidate("a", "eu", {"tier": "canary"}, False),
        Candidate("b", "eu", {"tier": "canary"}, True),
        Candidate("d", "us", {"tier": "canary"}, False),
        Candidate("e", "eu", {}, False),
    ]
    assert select(nodes, {"region": "eu", "labels": {"tier": "canary"}}) == ["a", "c"]
    assert select(nodes, {}) == ["a", "c", "d", "e"]
    assert select(nodes, {"node_ids": ["e", "b"]}) == ["e"]
