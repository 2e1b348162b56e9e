"""``edgesync serve`` configured by the seed's MINIO_* variables, against SeaweedFS.

The real executable (installed script and dist/edgesync.pyz, see conftest.py)
stores what ``edgesync upload`` sends in the S3 bucket, and a node's plan
points at a presigned URL on the S3 server itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from s3.support import ACCESS_KEY, SECRET_KEY, S3Server

from .conftest import ADMIN_TOKEN
from .support import Edgesync, http_request, start_server

MODULE_WAT = '(module (func (export "_start")) (global (export "tag") i32 (i32.const 42)))'


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server.launch(tmp_path / "seaweedfs")
    try:
        yield server
    finally:
        server.stop()


def test_serve_on_minio_variables(edgesync: Edgesync, s3: S3Server, tmp_path: Path) -> None:
    env = {
        **edgesync.env,
        "MINIO_ENDPOINT": s3.endpoint,
        "MINIO_ACCESS_KEY": ACCESS_KEY,
        "MINIO_SECRET_KEY": SECRET_KEY,
        "MINIO_SECURE": "false",
    }
    runner = Edgesync(edgesync.kind, edgesync.argv, env)
    server = start_server(runner, tmp_path, ADMIN_TOKEN)
    try:
        # serve created the bucket at startup.
        assert s3.client().bucket_exists("wasm-functions")
        ready = server.request("GET", "/readyz")
        assert ready.status == 200, ready.body
        assert ready.json()["checks"]["artifacts"] == "ok"

        module = bytes(wasmtime.wat2wasm(MODULE_WAT))
        path = tmp_path / "hello.wasm"
        path.write_bytes(module)
        created = runner.run_json("upload", "hello", "1.0.0", str(path), server=server)
        assert created["sha256"] == hashlib.sha256(module).hexdigest()

        response = s3.client().get_object("wasm-functions", "hello/1.0.0/function.wasm")
        try:
            assert response.read() == module
        finally:
            response.close()
            response.release_conn()
        # Nothing in the data dir's folder store: the bytes went to S3 only.
        assert not list((server.data_dir / "artifacts").rglob("*.wasm"))

        enrollment = runner.run_json("token", "create", server=server)
        registered = server.request(
            "POST",
            "/api/v1/nodes/register",
            {"name": "edge-s3", "enrollment_token": enrollment["token"]},
        )
        assert registered.status == 201, registered.body
        node_id, token = registered.json()["node_id"], registered.json()["token"]
        plan = server.request("GET", f"/api/v1/nodes/{node_id}/sync", token=token).json()
        (deploy,) = [a for a in plan["actions"] if a["type"] == "deploy_function"]
        assert deploy["download_url"].startswith(f"http://{s3.endpoint}/wasm-functions/")
        download = http_request("GET", deploy["download_url"])
        assert download.status == 200 and download.body == module
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    assert SECRET_KEY not in log
