"""An S3 server for the tests: moto's server mode as a subprocess on loopback.

A subprocess (not moto's in-process thread) so a test can stop it and start it
again on the same port: an outage and a recovery, as a real MinIO would have.
moto keeps its state in memory, so a restarted server starts with no buckets.

What moto does not check (see docs/deploy.md): presigned signatures, credentials,
expiry, regions. These tests cover the protocol and the control plane's
behaviour, not S3's security.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from minio import Minio

ACCESS_KEY = "edgesync-test-access"
# Distinctive, so a test can assert it never appears in a log or an error body.
SECRET_KEY = "s3cret-edgesync-7f3a9c"
STARTUP_TIMEOUT = 30.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def fail_or_skip(reason: str) -> None:
    """No S3 server: fail under CI=true (the tests must run there), skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the S3 tests may not be skipped)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoError(RuntimeError):
    pass


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ``stop()``/``start()`` keep the port."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def launch(cls, log_path: Path) -> MotoServer:
        """A started server, or fail/skip the test when moto cannot run here."""
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            fail_or_skip(f"moto[server] is not installed: {exc}")
        server = cls(log_path)
        try:
            server.start()
        except MotoError as exc:
            fail_or_skip(f"moto's S3 server did not start: {exc}")
        return server

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, bucket: str | None = None, *, keys: bool = True, **query: str) -> str:
        """The artifact URL of this server (``http://``; bucket default: the seed's)."""
        userinfo = f"{ACCESS_KEY}:{SECRET_KEY}@" if keys else ""
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://{userinfo}{self.endpoint}/{bucket or ''}" + (f"?{tail}" if tail else "")

    def client(self) -> Minio:
        """A minio SDK client of its own, to look at the bucket behind the app's back."""
        from minio import Minio

        return Minio(self.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region="us-east-1")

    def start(self, attempts: int = 5) -> None:
        """Start on the remembered port, or a free one (another if that was taken)."""
        fixed = self.port != 0
        for _ in range(1 if fixed else attempts):
            port = self.port if fixed else free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.port = port
            if self._wait_ready():
                return
            self.stop()
            if not fixed:
                self.port = 0
        raise MotoError(self.log_path.read_text(errors="replace")[-2000:] or "no output")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def reset(self) -> None:
        """Forget every bucket and object (moto's own reset API)."""
        request = urllib.request.Request(
            f"http://{self.endpoint}/moto-api/reset", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(
                    f"http://{self.endpoint}/moto-api/data.json", timeout=2
                ) as response:
                    if response.status == 200:
                        return True
            except OSError:
                time.sleep(0.05)
        return False
