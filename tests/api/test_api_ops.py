"""Operations: health, readiness, metrics, the OpenAPI document, unavailability."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import stat

import psycopg
import pytest
from api_support import ADMIN, Api, expect_error
from prometheus_client.parser import text_string_to_metric_families

from appliance.store.postgres import parse_url
from edgesync.errors import EdgesyncError

METRIC_FAMILIES = {
    "edgesync_nodes": "gauge",
    "edgesync_syncs": "counter",
    "edgesync_sync_latency_seconds": "histogram",
    "edgesync_artifact_download_bytes": "counter",
    "edgesync_artifact_download_seconds": "histogram",
    "edgesync_api_request_seconds": "histogram",
    "edgesync_db_connections_in_use": "gauge",
    "edgesync_db_pool_connections": "gauge",
    "edgesync_db_pool_max_connections": "gauge",
    "edgesync_db_pool_waiting": "gauge",
    "edgesync_db_serialization_retries": "counter",
    "edgesync_bcrypt_calls": "counter",
}


async def scrape(api: Api) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = await api.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    families: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(await response.text()):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        families.setdefault(f"type:{family.name}", {})[(family.type, ())] = 0
    return families


def value(families: dict, sample: str, **labels: str) -> float:  # type: ignore[type-arg]
    for samples in families.values():
        key = (sample, tuple(sorted(labels.items())))
        if key in samples:
            return float(samples[key])
    return 0.0


async def test_healthz_needs_no_token(api: Api) -> None:
    assert await api.json("GET", "/healthz") == {"status": "ok"}


async def test_readyz_when_ready(api: Api) -> None:
    body = await api.json("GET", "/readyz")
    assert body == {"status": "ready", "checks": {"database": "ok", "artifacts": "ok"}}


async def test_readyz_is_503_when_the_artifact_store_is_gone(api: Api) -> None:
    shutil.rmtree(api.config.data_dir / "artifacts")
    response = await api.get("/readyz")
    error = await expect_error(response, 503, "SERVICE_UNAVAILABLE")
    assert error["details"]["checks"]["database"] == "ok"
    assert error["details"]["checks"]["artifacts"].startswith("unavailable")
    assert response.headers["Retry-After"].isdigit()
    assert str(api.config.data_dir) not in await response.text()


async def test_readyz_is_503_when_the_database_is_gone(api: Api) -> None:
    await api.services.store.db.close()
    response = await api.get("/readyz")
    error = await expect_error(response, 503, "SERVICE_UNAVAILABLE")
    assert error["details"]["checks"]["database"].startswith("unavailable")
    assert error["retryable"] is True
    # Liveness is not readiness: the process is still up.
    assert (await api.get("/healthz")).status == 200
    # Reads and writes say "retry later", not "internal error".
    await expect_error(await api.get("/api/v1/nodes", headers=ADMIN), 503, "SERVICE_UNAVAILABLE")
    response = await api.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN)
    await expect_error(response, 503, "SERVICE_UNAVAILABLE")


@pytest.mark.databases("sqlite")
async def test_locked_database_is_503_retryable(api: Api) -> None:
    """A write that cannot get the database answers 503, retryable, without SQL text."""
    database = api.services.store.db
    # Hold the write lock from another connection; wait briefly instead of 5 s.
    await database._writer.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
    blocker = sqlite3.connect(api.config.data_dir / "edgesync.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        response = await api.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN)
        error = await expect_error(response, 503, "SERVICE_UNAVAILABLE")
        assert "locked" not in error["message"]
        assert response.headers["Retry-After"].isdigit()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    response = await api.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN)
    assert response.status == 201


@pytest.mark.databases("postgresql")
async def test_locked_table_is_503_retryable_on_postgresql(make_api, make_database_url) -> None:
    """A write that waits past ``lock_timeout`` for another transaction's lock: 503."""
    url = make_database_url() + "&lock_timeout=0.05"
    api: Api = await make_api(database_url=url)
    blocker = await psycopg.AsyncConnection.connect(parse_url(url)[0], autocommit=True)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE enrollment_tokens IN ACCESS EXCLUSIVE MODE")
        response = await api.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN)
        error = await expect_error(response, 503, "SERVICE_UNAVAILABLE")
        assert "lock" not in error["message"]
        assert response.headers["Retry-After"].isdigit()
        await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
    response = await api.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN)
    assert response.status == 201


async def test_metrics_expose_every_family(api: Api, wasm) -> None:
    node = await api.register()
    created = await api.upload_ok("hello", "1.0", wasm.module())
    plan = await api.plan(node)
    download = await api.get(f"/api/v1/functions/{created['id']}/download", headers=ADMIN)
    assert download.status == 200
    await api.apply(node, plan)
    families = await scrape(api)
    for name, kind in METRIC_FAMILIES.items():
        assert name in families, name
        assert (kind, ()) in families[f"type:{name}"], (name, kind)
    assert value(families, "edgesync_nodes", status="online") == 1
    assert value(families, "edgesync_nodes", status="offline") == 0
    assert value(families, "edgesync_syncs_total", status="success") == 1
    assert value(families, "edgesync_sync_latency_seconds_count", status="success") == 1
    assert value(families, "edgesync_artifact_download_bytes_total") == created["size_bytes"]
    assert value(families, "edgesync_artifact_download_seconds_count") == 1
    assert value(families, "edgesync_db_connections_in_use") >= 0
    # Latency by route template, never by raw path (ids would explode cardinality).
    routes = {
        dict(labels).get("route")
        for (sample, labels) in families["edgesync_api_request_seconds"]
        if sample == "edgesync_api_request_seconds_count"
    }
    assert "/api/v1/nodes/{node_id}/sync" in routes
    assert not any(node.id in (route or "") for route in routes)


async def test_polling_never_runs_bcrypt(api: Api, wasm) -> None:
    await api.upload_ok("hello", "1.0", wasm.module())
    node = await api.register()
    families = await scrape(api)
    before = value(families, "edgesync_bcrypt_calls_total")
    assert before == 2  # enrollment token creation + its one check at registration
    plan = await api.plan(node)
    for _ in range(10):
        assert (await api.poll(node, plan["etag"])).status == 304
        await api.post(f"/api/v1/nodes/{node.id}/heartbeat", json={}, headers=node.headers)
        await api.get("/api/v1/nodes", headers=ADMIN)
    await api.apply(node, plan)
    await api.plan(node)
    assert value(await scrape(api), "edgesync_bcrypt_calls_total") == before


async def test_openapi_document_is_public(api: Api) -> None:
    document = await api.json("GET", "/api/v1/openapi.json")
    assert document["openapi"].startswith("3.")
    assert "paths" in document


async def test_admin_token_file_is_created_once_with_mode_0600(
    make_api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgesync")
    api: Api = await make_api(admin_token=None)
    path = api.config.data_dir / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    response = await api.get("/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert str(path) in logged
    assert token not in logged


@pytest.mark.databases("sqlite")
async def test_one_server_per_embedded_data_dir(make_api) -> None:
    api: Api = await make_api()
    with pytest.raises(EdgesyncError, match="another edgesync serve") as refused:
        await make_api(data_dir=api.config.data_dir)
    assert refused.value.code == "DATA_DIR_LOCKED"
    assert (await api.get("/healthz")).status == 200
