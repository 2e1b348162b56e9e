"""The planner's target rules for releases: going back across migrations, and the
effective release of a node (pin > assignment > the fleet's)."""

from __future__ import annotations

from appliance.planner import (
    FunctionSpec,
    MigrationSpec,
    NodeView,
    RevertSpec,
    TargetSpec,
    make_plan,
)
from appliance.store.releases import FleetSettings, resolve_release
from edgesync.protocol import FunctionRef, NodeState, RevertSchema


def spec(name: str, version: str) -> FunctionSpec:
    return FunctionSpec(f"id-{name}-{version}", name, version, "b" * 64, 10)


def release(schema: int, newest: int, *functions: FunctionSpec, down: bool = True) -> TargetSpec:
    """A release at ``schema`` while migrations up to ``newest`` exist."""
    return TargetSpec(
        tuple(MigrationSpec(v, f"m{v}", f"CREATE TABLE t{v} (x);") for v in range(1, schema + 1)),
        functions,
        tuple(
            RevertSpec(v, f"DROP TABLE t{v};" if down else None)
            for v in range(schema + 1, newest + 1)
        ),
    )


def test_going_back_reverts_in_descending_order_before_anything_else() -> None:
    hello2 = spec("hello", "2")
    node = NodeView(NodeState(3, (hello2.ref(),)))
    draft = make_plan(node, release(1, 3, spec("hello", "1")))
    assert draft.reverts == (RevertSchema(3, "DROP TABLE t3;"), RevertSchema(2, "DROP TABLE t2;"))
    assert draft.schema == ()
    assert draft.actions() == draft.reverts
    assert [d.version for d in draft.deploys] == ["1"]
    assert draft.target.schema_version == 1
    assert draft.target.functions == (FunctionRef("hello", "1", "b" * 64),)


def test_reverts_only_what_the_node_has_applied() -> None:
    draft = make_plan(NodeView(NodeState(2, ())), release(1, 4))
    assert [r.version for r in draft.reverts] == [2]


def test_a_migration_without_down_sql_keeps_the_schema_and_swaps_functions() -> None:
    node = NodeView(NodeState(2, (spec("hello", "2").ref(),)))
    draft = make_plan(node, release(1, 2, spec("hello", "1"), down=False))
    assert draft.reverts == () and draft.schema == ()
    assert draft.target.schema_version == 2
    assert [d.version for d in draft.deploys] == ["1"]


def test_forward_release_applies_and_never_reverts() -> None:
    draft = make_plan(NodeView(NodeState(1, ())), release(3, 3))
    assert draft.reverts == ()
    assert [a.version for a in draft.schema] == [2, 3]


def test_plan_at_release_is_empty() -> None:
    hello = spec("hello", "1")
    draft = make_plan(NodeView(NodeState(1, (hello.ref(),))), release(1, 3, hello))
    assert draft.is_empty


def test_effective_release_pin_beats_assignment_beats_fleet() -> None:
    auto = FleetSettings(True, "default")
    manual = FleetSettings(False, "default")
    assert resolve_release("pin", "assigned", auto, "latest") == "pin"
    assert resolve_release(None, "assigned", auto, "latest") == "assigned"
    assert resolve_release(None, None, auto, "latest") == "latest"
    assert resolve_release(None, None, manual, "latest") == "default"
    assert resolve_release(None, None, FleetSettings(False, None), "latest") is None
    assert resolve_release(None, None, auto, None) is None
