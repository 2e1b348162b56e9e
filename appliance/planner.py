"""The planner: a pure function from (node state, target) to a plan.

No I/O, no clock: given the same inputs it returns the same plan and ETag,
which is what makes the plan cacheable and ``If-None-Match`` meaningful. Signed
URLs and sync ids are attached by the caller (``appliance.sync_service``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from edgesync.protocol import ApplySchema, FunctionRef, NodeState, RemoveFunction, RevertSchema


@dataclass(frozen=True)
class MigrationSpec:
    version: int
    description: str
    up_sql: str


@dataclass(frozen=True)
class RevertSpec:
    """A migration above the target's schema: how a node ahead of the target undoes it."""

    version: int
    down_sql: str | None


@dataclass(frozen=True)
class FunctionSpec:
    id: str
    name: str
    version: str
    sha256: str
    size_bytes: int
    storage_key: str = ""

    def ref(self) -> FunctionRef:
        return FunctionRef(self.name, self.version, self.sha256)


@dataclass(frozen=True)
class TargetSpec:
    migrations: tuple[MigrationSpec, ...]
    functions: tuple[FunctionSpec, ...]
    # Migrations above the target's schema (a release behind the newest migration).
    reverts: tuple[RevertSpec, ...] = ()

    @property
    def schema_version(self) -> int:
        return max((m.version for m in self.migrations), default=0)

    def state(self) -> NodeState:
        return NodeState(self.schema_version, tuple(f.ref() for f in self.functions))


@dataclass(frozen=True)
class NodeView:
    """A node's reported state plus its revision (bumped by every recorded ack)."""

    state: NodeState
    revision: int = 0


@dataclass(frozen=True)
class PlanDraft:
    etag: str
    target: NodeState
    schema: tuple[ApplySchema, ...] = ()
    reverts: tuple[RevertSchema, ...] = ()
    deploys: tuple[FunctionSpec, ...] = ()
    removes: tuple[RemoveFunction, ...] = field(default_factory=tuple)
    sync_type: str = "incremental"

    @property
    def is_empty(self) -> bool:
        return not (self.reverts or self.schema or self.deploys or self.removes)

    def actions(self) -> tuple[RevertSchema | ApplySchema, ...]:
        """The schema actions in execution order: reverts (descending), then applies."""
        return (*self.reverts, *self.schema)


def plan_etag(node: NodeView, target: NodeState) -> str:
    """Derived from both sides: the node's state and revision, and the target."""
    material = f"{node.state.digest()}|{node.revision}|{target.digest()}"
    return '"' + hashlib.sha256(material.encode()).hexdigest()[:32] + '"'


def schema_reverts(current: int, target: TargetSpec) -> tuple[RevertSchema, ...] | None:
    """What takes a node at schema ``current`` back to the target's schema, newest
    first; None when a migration on the way has no down_sql (the node cannot go
    back: its schema stays where it is)."""
    wanted = target.schema_version
    if current <= wanted:
        return ()
    down = {r.version: r.down_sql for r in target.reverts}
    steps = range(current, wanted, -1)
    if any(not down.get(version) for version in steps):
        return None
    return tuple(RevertSchema(version, str(down[version])) for version in steps)


def make_plan(node: NodeView, target: TargetSpec) -> PlanDraft:
    """What ``node`` must do to reach ``target``: schema reverts, schema applies,
    then deploys, then removes."""
    current = node.state
    reverts = schema_reverts(current.schema_version, target)
    target_state = target.state()
    if reverts is None:  # irreversible: keep the node's schema, swap the functions
        reverts = ()
        target_state = NodeState(current.schema_version, target_state.functions)
    schema = tuple(
        ApplySchema(m.version, m.description, m.up_sql)
        for m in sorted(target.migrations, key=lambda m: m.version)
        if m.version > current.schema_version
    )
    have = set(current.functions)
    deploys = tuple(
        sorted((f for f in target.functions if f.ref() not in have), key=lambda f: f.name)
    )
    wanted = set(target_state.functions)
    removes = tuple(
        RemoveFunction(ref.name, ref.version) for ref in current.functions if ref not in wanted
    )
    empty_node = current.schema_version == 0 and not current.functions
    return PlanDraft(
        etag=plan_etag(node, target_state),
        target=target_state,
        schema=schema,
        reverts=reverts,
        deploys=deploys,
        removes=removes,
        sync_type="full" if empty_node else "incremental",
    )
