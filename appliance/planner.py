"""The planner: a pure function from (node state, target) to a plan.

No I/O, no clock: given the same inputs it returns the same plan and ETag,
which is what makes the plan cacheable and ``If-None-Match`` meaningful. Signed
URLs and sync ids are attached by the caller (``appliance.sync_service``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from edgesync.protocol import ApplySchema, FunctionRef, NodeState, RemoveFunction


@dataclass(frozen=True)
class MigrationSpec:
    version: int
    description: str
    up_sql: str


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

    def state(self) -> NodeState:
        version = max((m.version for m in self.migrations), default=0)
        return NodeState(version, tuple(f.ref() for f in self.functions))


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
    deploys: tuple[FunctionSpec, ...] = ()
    removes: tuple[RemoveFunction, ...] = field(default_factory=tuple)
    sync_type: str = "incremental"

    @property
    def is_empty(self) -> bool:
        return not (self.schema or self.deploys or self.removes)


def plan_etag(node: NodeView, target: NodeState) -> str:
    """Derived from both sides: the node's state and revision, and the target."""
    material = f"{node.state.digest()}|{node.revision}|{target.digest()}"
    return '"' + hashlib.sha256(material.encode()).hexdigest()[:32] + '"'


def make_plan(node: NodeView, target: TargetSpec) -> PlanDraft:
    """What ``node`` must do to reach ``target``: schema, then deploys, then removes."""
    target_state = target.state()
    current = node.state
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
        deploys=deploys,
        removes=removes,
        sync_type="full" if empty_node else "incremental",
    )
