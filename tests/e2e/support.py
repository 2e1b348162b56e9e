"""Helpers of the end-to-end tests: running the executable, a server, raw HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# Bounds on waiting, never assertions about speed.
STARTUP_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def clean_env() -> dict[str, str]:
    """This environment without PYTHON* (a zipapp must not see our paths) or EDGESYNC_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EDGESYNC_"))}
    env["LANG"] = env.get("LANG") or "C.UTF-8"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- raw HTTP, as an agent speaks it ---------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Response:
    parts = urlsplit(url)
    sent = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    connection = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, body=body, headers=sent)
        response = connection.getresponse()
        return Response(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def multipart(fields: dict[str, str], module: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` upload body and its content type."""
    boundary = f"e2e-{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="module"; '
        f'filename="module.wasm"\r\nContent-Type: application/wasm\r\n\r\n'.encode()
        + module
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# -- the executable --------------------------------------------------------------------


@dataclass(frozen=True)
class Edgesync:
    """One way of running the ``edgesync`` executable."""

    kind: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, server: Server | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if server is not None:
            env |= {"EDGESYNC_SERVER": server.url, "EDGESYNC_TOKEN": server.admin_token}
        result = subprocess.run(
            [*self.argv, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"[{self.kind}] edgesync {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def run_json(self, *args: str, server: Server | None = None) -> Any:
        return json.loads(self.run(*args, server=server).stdout)


# -- the control plane -----------------------------------------------------------------


@dataclass
class Server:
    """A running ``edgesync serve``."""

    url: str
    admin_token: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        url = path if path.startswith("http") else f"{self.url}{path}"
        return http_request(method, url, body, sent)

    def stop(self) -> int:
        """SIGTERM (graceful shutdown); SIGKILL only if it hangs. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(edgesync: Edgesync, workdir: Path, admin_token: str, attempts: int = 5) -> Server:
    """``edgesync serve`` on a free port; another port if that one was taken meanwhile."""
    data_dir = workdir / "data"
    for attempt in range(attempts):
        port = free_port()
        log_path = workdir / f"serve-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    *edgesync.argv,
                    "serve",
                    *("--host", "127.0.0.1", "--port", str(port)),
                    *("--data-dir", str(data_dir)),
                ],
                env={**edgesync.env, "EDGESYNC_ADMIN_TOKEN": admin_token},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(f"http://127.0.0.1:{port}", admin_token, data_dir, process, log_path)
        if _wait_healthy(server):
            return server
        server.stop()
        if "address already in use" not in server.log().lower():
            pytest.fail(f"[{edgesync.kind}] edgesync serve did not become healthy:\n{server.log()}")
    pytest.fail(f"edgesync serve found no free port in {attempts} attempts")


def _wait_healthy(server: Server) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            if server.request("GET", "/healthz").status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
