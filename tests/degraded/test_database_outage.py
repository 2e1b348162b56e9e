"""The metadata database goes away (``pg_ctl stop``) and comes back (``pg_ctl start``)
while the control plane keeps running.

During the outage every route that needs the database answers 503
``SERVICE_UNAVAILABLE`` (retryable, ``Retry-After``) within a bounded time, and
nothing is half-written; afterwards the same app, never restarted, serves
every route again.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from degraded_support import (
    ADMIN,
    Api,
    AppFactory,
    Node,
    PgDatabase,
    expect_unavailable,
    past_the_cache,
    readiness,
    wait_ready,
    within,
)
from minio.error import S3Error
from s3.support import S3Server

BUCKET = "wasm-functions"


@dataclass
class Fleet:
    """What exists before the outage: a function, schemas, a node with a plan to ack."""

    function: dict[str, Any]
    node: Node
    pending_plan: dict[str, Any]
    spare_enrollment_token: str
    state_seq: int


async def prepare_fleet(api: Api, pg: PgDatabase, wasm: Any) -> Fleet:
    function = await api.upload_ok("hello", "1.0", wasm.module(1))
    await api.add_schema(1, "CREATE TABLE readings (id INTEGER PRIMARY KEY, v REAL);")
    node = await api.register("edge-1")
    await api.apply(node, await api.plan(node))
    await api.add_schema(2, "ALTER TABLE readings ADD COLUMN unit TEXT;")
    pending = await api.plan(node)
    assert pending["sync_id"] and pending["target"]["schema_version"] == 2
    spare = await api.enrollment_token()
    state_seq = await pg.value("SELECT state_seq FROM nodes WHERE id = %s", (node.id,))
    return Fleet(function, node, pending, spare, state_seq)


def outage_requests(api: Api, fleet: Fleet, module: bytes) -> dict[str, Any]:
    """One request of every kind an operator or a node makes, none yet sent."""
    node, function = fleet.node, fleet.function
    return {
        "list nodes": api.get("/api/v1/nodes", headers=ADMIN),
        "show node": api.get(f"/api/v1/nodes/{node.id}", headers=ADMIN),
        "list functions": api.get("/api/v1/functions", headers=ADMIN),
        "show function": api.get(f"/api/v1/functions/{function['id']}", headers=ADMIN),
        "download": api.get(f"/api/v1/functions/{function['id']}/download", headers=ADMIN),
        "list schemas": api.get("/api/v1/schemas", headers=ADMIN),
        "add schema": api.post(
            "/api/v1/schemas",
            json={"version": 3, "up_sql": "CREATE INDEX readings_v ON readings (v);"},
            headers=ADMIN,
        ),
        "enrollment token": api.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN),
        "register": api.post(
            "/api/v1/nodes/register",
            json={"name": "edge-late", "enrollment_token": fleet.spare_enrollment_token},
        ),
        "upload": api.upload("during", "1.0", module),
        "poll": api.poll(node),
        "ack": api.ack(node, fleet.pending_plan["sync_id"], fleet.pending_plan["target"]),
        "heartbeat": api.post(
            f"/api/v1/nodes/{node.id}/heartbeat",
            json={"agent_version": "2.0"},
            headers=node.headers,
        ),
        "history": api.get(f"/api/v1/nodes/{node.id}/sync/history", headers=node.headers),
        "metrics": api.get("/metrics"),
    }


def objects(s3: S3Server, prefix: str) -> list[str]:
    try:
        return [o.object_name for o in s3.client().list_objects(BUCKET, prefix, recursive=True)]
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            return []
        raise


async def test_database_outage_is_503_everywhere_and_heals_without_restart(
    make_replica: AppFactory, pg: PgDatabase, own_s3: S3Server, wasm: Any
) -> None:
    api = await make_replica(artifact_url=own_s3.url(), artifact_delivery="proxy")
    fleet = await prepare_fleet(api, pg, wasm)
    assert await readiness(api) == (200, {"database": "ok", "artifacts": "ok"})

    await asyncio.to_thread(pg.server.stop, "fast")
    past_the_cache(api)

    status, checks = await readiness(api)
    assert status == 503
    assert checks["database"].startswith("unavailable"), checks
    assert checks["artifacts"] == "ok"
    # Liveness does not depend on the database: an orchestrator must not kill
    # every replica because the database is down.
    assert (await within(api.get("/healthz"))).status == 200

    module = wasm.module(7)
    requests = outage_requests(api, fleet, module)
    # All at once, as a fleet would: each ends in a bounded time.
    responses = await asyncio.gather(*(within(r) for r in requests.values()))
    for name, response in zip(requests, responses, strict=True):
        try:
            await expect_unavailable(response)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc

    # Nothing half-written: the upload's staging file is gone, no object was stored.
    assert [p for p in (api.config.data_dir / "staging").rglob("*") if p.is_file()] == []
    assert objects(own_s3, "during/") == []

    await asyncio.to_thread(pg.server.start)
    assert await wait_ready(api) == {"database": "ok", "artifacts": "ok"}

    # Still nothing of the refused writes.
    assert await pg.rows("SELECT id FROM functions WHERE name = 'during'") == []
    assert objects(own_s3, "during/") == []
    versions = await pg.rows("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == [1, 2]
    record = await pg.rows(
        "SELECT status, ack_digest FROM sync_records WHERE id = %s",
        (fleet.pending_plan["sync_id"],),
    )
    assert record == [{"status": "pending", "ack_digest": None}]
    node_row = await pg.rows(
        "SELECT current_schema_version, state_seq, agent_version FROM nodes WHERE id = %s",
        (fleet.node.id,),
    )
    assert node_row == [
        {"current_schema_version": 1, "state_seq": fleet.state_seq, "agent_version": None}
    ]

    await retry_everything(api, fleet, own_s3, module)


async def retry_everything(api: Api, fleet: Fleet, s3: S3Server, module: bytes) -> None:
    """Every request refused during the outage, sent again: each succeeds now."""
    node = fleet.node
    created = await api.upload_ok("during", "1.0", module)
    assert created["sha256"] == hashlib.sha256(module).hexdigest()
    assert objects(s3, "during/") == ["during/1.0/function.wasm"]
    download = await within(api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN))
    assert download.status == 200 and await download.read() == module

    acked = await api.apply(node, fleet.pending_plan)
    assert acked["sync"]["status"] == "success"
    shown = await api.node(node)
    assert shown["current_schema_version"] == 2
    beat = await within(
        api.post(
            f"/api/v1/nodes/{node.id}/heartbeat",
            json={"agent_version": "2.0"},
            headers=node.headers,
        )
    )
    assert beat.status == 200, await beat.text()
    await api.add_schema(3, "CREATE INDEX readings_v ON readings (v);")
    late = await api.register("edge-late", enrollment_token=fleet.spare_enrollment_token)
    assert (await api.plan(late))["target"]["schema_version"] == 3
    plan = await api.plan(node)
    assert plan["target"]["schema_version"] == 3
    assert {f["name"] for f in plan["target"]["functions"]} == {"hello", "during"}
    for path in ("/api/v1/nodes", "/api/v1/functions", "/api/v1/schemas", "/metrics"):
        response = await within(api.get(path, headers=ADMIN))
        assert response.status == 200, f"{path}: {await response.text()}"
    await api.enrollment_token()
    history = await api.history(node)
    assert history[0]["status"] == "pending" and history[1]["status"] == "success"


async def test_two_replicas_both_degrade_and_both_recover(
    make_replica: AppFactory, pg: PgDatabase, wasm: Any
) -> None:
    first = await make_replica()
    second = await make_replica()
    node = await first.register("edge-1")
    assert (await second.plan(node))["sync_id"] is None  # the node is known to both

    await asyncio.to_thread(pg.server.stop, "fast")
    past_the_cache(first, second)
    readiness_of_both = asyncio.gather(readiness(first), readiness(second))
    refused = await asyncio.gather(
        within(first.upload("during", "1.0", wasm.module(3))),
        within(
            second.post(
                "/api/v1/schemas", json={"version": 1, "up_sql": "SELECT 1;"}, headers=ADMIN
            )
        ),
        within(first.poll(node)),
        within(second.poll(node)),
        within(second.get("/api/v1/nodes", headers=ADMIN)),
    )
    for status, checks in await readiness_of_both:
        assert status == 503 and checks["database"].startswith("unavailable"), checks
    for response in refused:
        await expect_unavailable(response)

    await asyncio.to_thread(pg.server.start)
    await asyncio.gather(wait_ready(first), wait_ready(second))

    # A write through one replica is what the other serves: the state is in the database.
    await second.upload_ok("during", "1.0", wasm.module(3))
    await first.add_schema(1, "CREATE TABLE t (x INTEGER);")
    for api in (first, second):
        listed = await api.json("GET", "/api/v1/functions", headers=ADMIN)
        assert [f["name"] for f in listed["functions"]] == ["during"]
    plan = await second.plan(node)
    assert plan["target"]["schema_version"] == 1
    await first.apply(node, plan)
    assert (await second.node(node))["current_schema_version"] == 1
