"""``--tls-cert/--tls-key``: the control plane speaks TLS 1.3 and nothing older."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from appliance.app import make_app
from appliance.config import ServeConfig
from appliance.tls import tls_context

ADMIN = "tls-admin-token-0123456789"


def self_signed(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_13_is_served_and_older_versions_are_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = ServeConfig(
        data_dir=tmp_path / "data", admin_token=ADMIN, bcrypt_rounds=4, tls_cert=cert, tls_key=key
    )
    context = tls_context(config)
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_3
    runner = web.AppRunner(make_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"https://127.0.0.1:{port}/api/v1/nodes"
    try:
        modern = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(
                url, ssl=modern, headers={"Authorization": f"Bearer {ADMIN}"}
            ) as response:
                assert response.status == 200
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=modern)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        writer.close()
        async with aiohttp.ClientSession() as session:
            old = ssl.create_default_context(cafile=str(cert))
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(url, ssl=old):
                    pass
    finally:
        await runner.cleanup()
