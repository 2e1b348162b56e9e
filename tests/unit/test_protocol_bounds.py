"""Every integer of the wire types is range-checked at parse: a number no store
column holds (2^63, 2^31 for schema versions) is a 400 naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from edgesync.errors import ValidationFailed
from edgesync.protocol import SCHEMA_VERSION_MAX, NodeState, action_from_dict

OUT_OF_RANGE = [-1, SCHEMA_VERSION_MAX + 1, 2**63, 2**64 + 1]


@pytest.mark.parametrize("version", OUT_OF_RANGE)
def test_node_state_schema_version_is_bounded(version: int) -> None:
    with pytest.raises(ValidationFailed) as raised:
        NodeState.from_dict({"schema_version": version, "functions": []}, "ack.state")
    assert raised.value.details["field"] == "ack.state.schema_version"


@pytest.mark.parametrize("version", [0, *OUT_OF_RANGE])
@pytest.mark.parametrize(
    "action",
    [{"type": "apply_schema", "up_sql": "SELECT 1"}, {"type": "revert_schema", "down_sql": "x"}],
)
def test_schema_action_versions_are_bounded(version: int, action: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as raised:
        action_from_dict({**action, "version": version}, "plan.actions[0]")
    assert raised.value.details["field"] == "plan.actions[0].version"


def test_the_bounds_themselves_are_accepted() -> None:
    state = NodeState.from_dict({"schema_version": SCHEMA_VERSION_MAX, "functions": []})
    assert state.schema_version == SCHEMA_VERSION_MAX
    action = {"type": "apply_schema", "version": SCHEMA_VERSION_MAX, "up_sql": "SELECT 1"}
    assert action_from_dict(action, "a").version == SCHEMA_VERSION_MAX  # type: ignore[union-attr]
