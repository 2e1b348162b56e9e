"""Going back across a migration: ``revert_schema`` actions run each migration's
``down_sql`` in the release's one transaction, on libsql and on the stdlib sqlite3."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.artifacts import ArtifactCache
from agent.edgedb import EdgeDatabase, MigrationFailed
from agent.failures import PlanInconsistent
from agent.reconcile import Reconciler
from agent.runtime.base import Invocation, Limits
from edgesync.errors import ValidationFailed
from edgesync.protocol import (
    ApplySchema,
    DeployFunction,
    FunctionRef,
    NodeState,
    Plan,
    RevertSchema,
    action_from_dict,
)

MODULE_V1, MODULE_V2 = b"\0asm v1 bytes", b"\0asm v2 bytes"
V1 = FunctionRef("hello", "1.0.0", hashlib.sha256(MODULE_V1).hexdigest())
V2 = FunctionRef("hello", "2.0.0", hashlib.sha256(MODULE_V2).hexdigest())
KV = ApplySchema(1, "kv", "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);")
# Migration 2 adds a column and a table; its down_sql takes both away again.
TAGS = ApplySchema(
    2,
    "tags",
    "ALTER TABLE kv ADD COLUMN tag TEXT;\nCREATE TABLE tags (name TEXT PRIMARY KEY);",
)
TAGS_DOWN = "DROP TABLE tags;\nALTER TABLE kv DROP COLUMN tag;"


def on_version_2_with_data(database: EdgeDatabase) -> None:
    database.apply_release([KV], [V1], "sync-1")
    database.execute("INSERT INTO kv VALUES ('a', 'one'), ('b', 'two')")
    database.apply_release([TAGS], [V2], "sync-2")
    database.execute("UPDATE kv SET tag = 'x' WHERE k = 'a'")
    database.execute("INSERT INTO tags VALUES ('x')")


def tables(database: EdgeDatabase) -> dict[str, str]:
    rows = database.execute(
        "SELECT name, sql FROM sqlite_master"
        " WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'"
    )
    return {str(name): str(sql) for name, sql in rows}


def test_a_revert_takes_the_schema_back_and_keeps_the_data(database: EdgeDatabase) -> None:
    on_version_2_with_data(database)
    state = database.apply_release([], [V1], "sync-3", reverts=[RevertSchema(2, TAGS_DOWN)])
    assert state == NodeState(1, (V1,)) == database.state()
    assert set(tables(database)) == {"kv"}
    assert database.execute("SELECT * FROM kv ORDER BY k") == [("a", "one"), ("b", "two")]
    assert database.execute("SELECT version FROM _edgesync_migrations") == [(1,)]


def test_a_failing_down_sql_rolls_the_whole_release_back(database: EdgeDatabase) -> None:
    on_version_2_with_data(database)
    before = (tables(database), database.execute("SELECT * FROM kv ORDER BY k"))
    # Its first statement applies; the second fails: nothing of the release remains.
    broken = "DROP TABLE tags;\nALTER TABLE kv DROP COLUMN missing;"
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release([], [V1], "sync-3", reverts=[RevertSchema(2, broken)])
    assert caught.value.details["phase"] == "revert" and caught.value.details["version"] == 2
    assert "missing" in caught.value.details["sql_error"]
    assert database.state() == NodeState(2, (V2,))
    assert (tables(database), database.execute("SELECT * FROM kv ORDER BY k")) == before


def test_revert_then_apply_in_one_release(database: EdgeDatabase) -> None:
    on_version_2_with_data(database)
    other = ApplySchema(2, "labels", "CREATE TABLE labels (name TEXT);")
    state = database.apply_release([other], [V2], "sync-3", reverts=[RevertSchema(2, TAGS_DOWN)])
    assert state == NodeState(2, (V2,))
    assert set(tables(database)) == {"kv", "labels"}
    [(checksum,)] = database.execute("SELECT checksum FROM _edgesync_migrations WHERE version = 2")
    assert checksum == hashlib.sha256(other.up_sql.encode()).hexdigest()


@pytest.mark.parametrize("prove", [True, False], ids=["dry-run", "real-apply"])
def test_a_failure_after_a_revert_names_the_apply_phase(
    database: EdgeDatabase, monkeypatch: pytest.MonkeyPatch, prove: bool
) -> None:
    on_version_2_with_data(database)
    if not prove:
        monkeypatch.setattr("agent.edgedb._prove", lambda *steps: None)
    clash = ApplySchema(2, "clash", "CREATE TABLE kv (x);")  # kv survives the revert
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release([clash], [V2], "sync-3", reverts=[RevertSchema(2, TAGS_DOWN)])
    assert caught.value.details["phase"] == "apply" and caught.value.details["version"] == 2
    assert "already exists" in caught.value.details["sql_error"]
    assert database.state() == NodeState(2, (V2,)) and "tags" in tables(database)


def test_a_revert_must_start_at_the_nodes_version(database: EdgeDatabase) -> None:
    on_version_2_with_data(database)
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release([], [V1], "sync-3", reverts=[RevertSchema(1, "DROP TABLE kv;")])
    assert caught.value.details == {"version": 1, "schema_version": 2, "phase": "revert"}
    assert database.state() == NodeState(2, (V2,))


@pytest.mark.parametrize(
    ("prove", "down_sql"),
    [
        (True, "DROP TABLE tags;\n/**/COMMIT;"),
        (True, "DELETE FROM _edgesync_functions;"),
        # The second layer, without the dry run: what libsql's apply itself can refuse.
        (False, "DROP TABLE tags;\n/**/COMMIT;"),
    ],
    ids=["dry-run-commit", "dry-run-bookkeeping", "real-apply-commit"],
)
def test_down_sql_runs_under_the_migration_rules(
    database: EdgeDatabase, monkeypatch: pytest.MonkeyPatch, prove: bool, down_sql: str
) -> None:
    on_version_2_with_data(database)
    if not prove:
        monkeypatch.setattr("agent.edgedb._prove", lambda *steps: None)
    with pytest.raises(MigrationFailed) as caught:
        database.apply_release([], [V1], "sync-3", reverts=[RevertSchema(2, down_sql)])
    assert caught.value.details["reason"] == "refused"
    assert caught.value.details["phase"] == "revert"
    assert database.state() == NodeState(2, (V2,))
    assert "tags" in tables(database)


def test_revert_schema_round_trips_and_its_order_is_enforced() -> None:
    revert = RevertSchema(3, "DROP TABLE t;")
    assert action_from_dict(revert.to_dict(), "a") == revert
    target = {"schema_version": 1, "functions": []}
    good = [RevertSchema(3, "x").to_dict(), RevertSchema(2, "y").to_dict(), KV.to_dict()]
    plan = Plan.from_dict({"etag": "e", "target": target, "actions": good})
    assert [a.type for a in plan.actions] == ["revert_schema", "revert_schema", "apply_schema"]
    for bad in (good[::-1], [good[1], good[0]], [good[0], KV.to_dict(), good[1]]):
        with pytest.raises(ValidationFailed):
            Plan.from_dict({"etag": "e", "target": target, "actions": bad})
    for version in (0, -1, 2**31):
        with pytest.raises(ValidationFailed):
            action_from_dict({"type": "revert_schema", "version": version, "down_sql": "x"}, "a")


# -- the reconciler: a hand-built plan, as a rollout's rollback would send it -------------


class RecordingRuntime:
    """Prepares nothing, records each activated table (what the node would serve)."""

    name = "wasmtime"
    version = "test"

    def __init__(self) -> None:
        self.tables: list[dict[str, FunctionRef]] = []

    def prepare(self, sha256: str, module_path: Path) -> None:
        assert module_path.read_bytes()

    def prepare_many(self, modules: Iterable[tuple[str, Path]]) -> None:
        for sha256, module_path in modules:
            self.prepare(sha256, module_path)

    def activate(self, table: Mapping[str, FunctionRef]) -> None:
        self.tables.append(dict(table))

    def functions(self) -> dict[str, FunctionRef]:
        return self.tables[-1] if self.tables else {}

    async def invoke(
        self, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits
    ) -> Invocation:
        raise AssertionError("not invoked here")

    def forget(self, sha256: str) -> None:
        pass

    def close(self) -> None:
        pass


async def download(url: str) -> AsyncIterator[bytes]:
    yield {"v1": MODULE_V1, "v2": MODULE_V2}[url]


def deploy(ref: FunctionRef, url: str) -> DeployFunction:
    return DeployFunction("f", ref.name, ref.version, ref.sha256, 10, url, "2099-01-01T00:00:00Z")


def plan(target: NodeState, *actions: Any) -> Plan:
    return Plan(sync_id=f"sync-{target.schema_version}", etag="e", target=target, actions=actions)


async def test_the_reconciler_goes_back_across_a_migration(
    database: EdgeDatabase, tmp_path: Path
) -> None:
    runtime = RecordingRuntime()
    node = Reconciler(tmp_path, database, ArtifactCache(tmp_path), runtime, download)
    await node.apply(plan(NodeState(1, (V1,)), KV, deploy(V1, "v1")))
    database.execute("INSERT INTO kv VALUES ('a', 'one')")
    await node.apply(plan(NodeState(2, (V2,)), TAGS, deploy(V2, "v2")))

    behind = NodeState(1, (V1,))
    with pytest.raises(PlanInconsistent) as caught:  # no revert: the node cannot go back
        await node.apply(plan(behind))
    assert caught.value.details["missing_reverts"] == [2]
    assert database.state() == NodeState(2, (V2,))

    state = await node.apply(plan(behind, RevertSchema(2, TAGS_DOWN)))
    assert state == behind == database.state()
    assert runtime.tables[-1] == {"hello": V1}
    assert set(tables(database)) == {"kv"}
    assert database.execute("SELECT * FROM kv") == [("a", "one")]


async def test_the_reconciler_reverts_and_reapplies_in_one_release(
    database: EdgeDatabase, tmp_path: Path
) -> None:
    runtime = RecordingRuntime()
    node = Reconciler(tmp_path, database, ArtifactCache(tmp_path), runtime, download)
    await node.apply(plan(NodeState(2, (V1,)), KV, TAGS, deploy(V1, "v1")))
    other = ApplySchema(2, "labels", "CREATE TABLE labels (name TEXT);")
    target = NodeState(2, (V2,))
    state = await node.apply(plan(target, RevertSchema(2, TAGS_DOWN), other, deploy(V2, "v2")))
    assert state == target and set(tables(database)) == {"kv", "labels"}

    # A failing revert leaves the node where it was: schema, tables, functions served.
    activations = len(runtime.tables)
    broken = RevertSchema(2, "DROP TABLE labels;\nDROP TABLE nope;")
    with pytest.raises(MigrationFailed):
        await node.apply(plan(NodeState(1, (V1,)), broken))
    assert database.state() == target and set(tables(database)) == {"kv", "labels"}
    assert len(runtime.tables) == activations
