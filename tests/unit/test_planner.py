"""The planner: a pure function from (node state, revision, target) to a plan."""

from __future__ import annotations

from appliance.planner import (
    FunctionSpec,
    MigrationSpec,
    NodeView,
    TargetSpec,
    make_plan,
    plan_etag,
)
from edgesync.protocol import ApplySchema, FunctionRef, NodeState, RemoveFunction


def sha(char: str) -> str:
    return char * 64


def spec(name: str, version: str, char: str = "a") -> FunctionSpec:
    return FunctionSpec(f"id-{name}-{version}", name, version, sha(char), 100)


def migration(version: int) -> MigrationSpec:
    return MigrationSpec(version, f"m{version}", f"CREATE TABLE t{version} (x INTEGER);")


def target(migrations: int = 0, *functions: FunctionSpec) -> TargetSpec:
    return TargetSpec(tuple(migration(v) for v in range(1, migrations + 1)), functions)


EMPTY = NodeView(NodeState())


def test_empty_node_and_empty_target_is_an_empty_full_plan() -> None:
    draft = make_plan(EMPTY, target())
    assert draft.is_empty
    assert draft.target == NodeState()
    assert draft.sync_type == "full"


def test_new_node_gets_every_schema_ascending_then_deploys() -> None:
    goal = TargetSpec(
        (migration(3), migration(1), migration(2)),
        (spec("zeta", "1.0"), spec("alpha", "2.0", "b")),
    )
    draft = make_plan(EMPTY, goal)
    assert [a.version for a in draft.schema] == [1, 2, 3]
    assert all(isinstance(a, ApplySchema) for a in draft.schema)
    assert [(f.name, f.version) for f in draft.deploys] == [("alpha", "2.0"), ("zeta", "1.0")]
    assert draft.removes == ()
    assert draft.sync_type == "full"
    assert draft.target.schema_version == 3
    assert {f.name for f in draft.target.functions} == {"alpha", "zeta"}


def test_only_missing_migrations_are_planned() -> None:
    node = NodeView(NodeState(2, ()), revision=1)
    draft = make_plan(node, target(4))
    assert [a.version for a in draft.schema] == [3, 4]
    assert draft.sync_type == "incremental"


def test_node_in_target_state_gets_an_empty_incremental_plan() -> None:
    hello = spec("hello", "1.0")
    node = NodeView(NodeState(1, (hello.ref(),)), revision=3)
    draft = make_plan(node, target(1, hello))
    assert draft.is_empty
    assert draft.sync_type == "incremental"


def test_upgrade_deploys_new_version_and_removes_old() -> None:
    old = spec("hello", "1.0", "a")
    new = spec("hello", "2.0", "b")
    node = NodeView(NodeState(0, (old.ref(),)), revision=1)
    draft = make_plan(node, target(0, new))
    assert draft.deploys == (new,)
    assert draft.removes == (RemoveFunction("hello", "1.0"),)


def test_function_withdrawn_from_target_is_removed() -> None:
    node = NodeView(NodeState(0, (spec("gone", "1.0").ref(), spec("kept", "1.0").ref())))
    draft = make_plan(node, target(0, spec("kept", "1.0")))
    assert draft.deploys == ()
    assert draft.removes == (RemoveFunction("gone", "1.0"),)


def test_version_rollback_deploys_the_older_version() -> None:
    """Deleting v2 makes v1 the newest again: a node on v2 goes back to v1."""
    v1 = spec("hello", "1.0", "a")
    v2 = spec("hello", "2.0", "b")
    node = NodeView(NodeState(0, (v2.ref(),)), revision=2)
    draft = make_plan(node, target(0, v1))
    assert draft.deploys == (v1,)
    assert draft.removes == (RemoveFunction("hello", "2.0"),)


def test_same_version_with_other_bytes_is_redeployed() -> None:
    node = NodeView(NodeState(0, (FunctionRef("hello", "1.0", sha("c")),)))
    goal = spec("hello", "1.0", "a")
    draft = make_plan(node, target(0, goal))
    assert draft.deploys == (goal,)
    assert draft.removes == (RemoveFunction("hello", "1.0"),)


def test_node_ahead_of_target_schema_gets_no_schema_action() -> None:
    # Without a down_sql for the migrations on the way back (none are known here)
    # the node cannot go back: its schema stays, and the plan's target says so.
    node = NodeView(NodeState(5, ()))
    draft = make_plan(node, target(3))
    assert draft.schema == () and draft.reverts == ()
    assert draft.target.schema_version == 5


def test_mixed_plan_keeps_every_kind_of_action() -> None:
    node = NodeView(NodeState(1, (spec("old", "1").ref(),)), revision=4)
    draft = make_plan(node, target(2, spec("new", "1")))
    assert [a.version for a in draft.schema] == [2]
    assert [f.name for f in draft.deploys] == ["new"]
    assert [r.name for r in draft.removes] == ["old"]
    assert not draft.is_empty


def test_etag_is_deterministic_and_quoted() -> None:
    goal = target(2, spec("hello", "1.0"))
    first = make_plan(EMPTY, goal).etag
    assert first == make_plan(EMPTY, goal).etag
    assert first.startswith('"') and first.endswith('"') and len(first) == 34


def test_etag_changes_with_node_state() -> None:
    goal = target(1, spec("hello", "1.0"))
    at_zero = make_plan(NodeView(NodeState(0, ())), goal).etag
    at_one = make_plan(NodeView(NodeState(1, ())), goal).etag
    with_fn = make_plan(NodeView(NodeState(1, (spec("hello", "1.0").ref(),))), goal).etag
    assert len({at_zero, at_one, with_fn}) == 3


def test_etag_changes_with_revision_alone() -> None:
    goal = target(1)
    state = NodeState(1, ())
    assert make_plan(NodeView(state, 1), goal).etag != make_plan(NodeView(state, 2), goal).etag


def test_etag_changes_with_target() -> None:
    base = make_plan(EMPTY, target(1, spec("hello", "1.0"))).etag
    more_schema = make_plan(EMPTY, target(2, spec("hello", "1.0"))).etag
    new_version = make_plan(EMPTY, target(1, spec("hello", "1.1"))).etag
    new_bytes = make_plan(EMPTY, target(1, spec("hello", "1.0", "f"))).etag
    extra_fn = make_plan(EMPTY, target(1, spec("hello", "1.0"), spec("other", "1"))).etag
    assert len({base, more_schema, new_version, new_bytes, extra_fn}) == 5


def test_etag_ignores_function_order() -> None:
    a, b = spec("a", "1"), spec("b", "1")
    assert plan_etag(EMPTY, target(0, a, b).state()) == plan_etag(EMPTY, target(0, b, a).state())
