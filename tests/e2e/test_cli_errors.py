"""Every way a command can fail ends in one line ``error: MESSAGE (CODE)``, never a traceback.

The real executable as a subprocess, the way a new user meets it: unenrolled and
damaged data dirs, files that are missing or not text, URLs that are wrong or lead
nowhere, bad options, and Ctrl-C. The installed console script only: the zipapp
runs the same ``edgesync.cli`` (tests/e2e/test_cli_e2e.py covers that it starts).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .support import COMMAND_TIMEOUT, Edgesync, free_port

ONE_LINE = re.compile(r"error: \S.* \((?P<code>[A-Z][A-Z0-9_]+)\)")


def failing(edgesync: Edgesync, *args: str, cwd: Path, code: str) -> str:
    """Run ``edgesync ARGS``: it must fail with exactly one stderr line of ``code``."""
    result = subprocess.run(
        [*edgesync.argv, *args],
        env=edgesync.env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    return one_line(result.returncode, result.stderr, code)


def one_line(returncode: int, stderr: str, code: str) -> str:
    assert returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    match = ONE_LINE.fullmatch(lines[0])
    assert match is not None and match["code"] == code, stderr
    return lines[0]


@pytest.fixture
def cli(installed_edgesync: Edgesync) -> Edgesync:
    return installed_edgesync


def test_agent_status_and_invoke_on_a_dir_no_agent_enrolled(cli: Edgesync, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for data_dir in ("empty", "missing"):
        line = failing(
            cli, "agent", "--data-dir", data_dir, "status", cwd=tmp_path, code="NOT_ENROLLED"
        )
        assert data_dir in line
        failing(cli, "invoke", "--data-dir", data_dir, "hello", cwd=tmp_path, code="NOT_ENROLLED")
    assert not (tmp_path / "missing").exists()  # reading status creates nothing


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"server": "http://x"}', b""],
    ids=["broken", "binary", "not-an-object", "fields-missing", "empty"],
)
def test_a_damaged_credentials_file(cli: Edgesync, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "node.json").write_bytes(content)
    for args in (["status"], ["--once", "--no-gateway"]):
        line = failing(
            cli, "agent", "--data-dir", "node", *args, cwd=tmp_path, code="BAD_CREDENTIALS"
        )
        assert "node.json" in line


def test_a_damaged_database_and_a_bad_ca_file(cli: Edgesync, tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    credentials = {"server": "http://127.0.0.1:1", "node_id": "n", "token": "t", "name": "n"}
    (node / "node.json").write_text(json.dumps({**credentials, "token_expires_at": "2030"}))
    (node / "edge.db").write_bytes(b"not a database, not at all " * 40)
    for args in (["agent", "--data-dir", "node", "status"], ["invoke", "--data-dir", "node", "f"]):
        line = failing(cli, *args, cwd=tmp_path, code="BAD_DATABASE")
        assert "edge.db" in line
    agent = ("agent", "--data-dir", "node", "--once", "--no-gateway", "--log-level", "warning")
    failing(cli, *agent, cwd=tmp_path, code="BAD_DATABASE")
    (tmp_path / "ca.pem").write_text("no certificate here\n")
    line = failing(
        cli,
        *agent,
        *("--server", "https://127.0.0.1:1", "--ca-file", "ca.pem"),
        cwd=tmp_path,
        code="BAD_TLS_FILES",
    )
    assert line == "error: cannot use --ca-file ca.pem: no certificate or crl found (BAD_TLS_FILES)"


def test_operator_commands_with_bad_servers_and_files(cli: Edgesync, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    line = failing(cli, "nodes", "list", "--server", nowhere, cwd=tmp_path, code="UNREACHABLE")
    assert line == f"error: cannot reach {nowhere}: connection refused (UNREACHABLE)"
    for server in ("127.0.0.1:8080", "http://[::1", "http://127.0.0.1:99999", "ftp://x"):
        failing(cli, "nodes", "list", "--server", server, cwd=tmp_path, code="BAD_CONFIG")
    failing(cli, "functions", "list", cwd=tmp_path, code="BAD_CONFIG")  # no --server at all
    failing(
        cli,
        *("nodes", "list", "--server", "http://no-such-host.invalid:1"),
        cwd=tmp_path,
        code="UNREACHABLE",
    )
    (tmp_path / "binary.sql").write_bytes(b"\xff\xfeCREATE")
    add = ("schema", "add", "--version", "1", "--server", nowhere, "--up")
    failing(cli, *add, "binary.sql", cwd=tmp_path, code="BAD_INPUT")
    failing(cli, *add, "missing.sql", cwd=tmp_path, code="USAGE")
    failing(cli, "upload", "f", "1.0.0", "missing.wasm", cwd=tmp_path, code="USAGE")
    failing(cli, "token", "create", "--max-uses", "0", cwd=tmp_path, code="USAGE")
    failing(cli, "nodes", "lst", cwd=tmp_path, code="USAGE")
    failing(cli, "no-such-command", cwd=tmp_path, code="USAGE")


class NotEdgesync(BaseHTTPRequestHandler):
    """Some other web server: 200 and HTML for a GET, 404 and HTML for anything else."""

    def _answer(self, status: int) -> None:
        body = b"<html>hello</html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(404)

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_is_not_edgesync(cli: Edgesync, tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), NotEdgesync) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{other.server_address[1]}"
            line = failing(cli, "nodes", "list", "--server", url, cwd=tmp_path, code="BAD_RESPONSE")
            assert line == (
                f"error: {url} answered HTTP 200 without a JSON object: is it an edgesync"
                " control plane? (BAD_RESPONSE)"
            )
            line = failing(
                cli,
                *("agent", "--server", url, "--data-dir", "node", "--once", "--no-gateway"),
                *("--enrollment-token", "est_x", "--log-level", "warning"),
                cwd=tmp_path,
                code="BAD_RESPONSE",
            )
            assert line == (
                f"error: {url} answered HTTP 404 without an error envelope: is it an edgesync"
                " control plane? (BAD_RESPONSE)"
            )
        finally:
            other.shutdown()


def test_agent_starts_that_cannot_work(cli: Edgesync, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    failing(cli, "agent", "--data-dir", "node", cwd=tmp_path, code="USAGE")  # no --server
    failing(
        cli, "agent", "--server", "ftp://x", "--data-dir", "node", cwd=tmp_path, code="BAD_CONFIG"
    )
    failing(
        cli,
        *("agent", "--server", nowhere, "--data-dir", "node", "--gateway", "nohost"),
        cwd=tmp_path,
        code="BAD_CONFIG",
    )
    # Enrolment against a server that is not there: the CLI's words, not aiohttp's.
    line = failing(
        cli,
        *("agent", "--server", nowhere, "--data-dir", "node", "--once", "--no-gateway"),
        *("--enrollment-token", "est_x", "--log-level", "warning"),
        cwd=tmp_path,
        code="UNREACHABLE",
    )
    assert line == f"error: cannot reach {nowhere}: connection refused (UNREACHABLE)"
    assert not (tmp_path / "node" / "node.json").exists()


def test_serve_starts_that_cannot_work(cli: Edgesync, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    line = failing(
        cli,
        *("serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", "data"),
        *("--tls-cert", "junk.pem", "--tls-key", "junk.pem"),
        cwd=tmp_path,
        code="BAD_TLS_FILES",
    )
    assert "junk.pem" in line
    failing(cli, "serve", "--port", "70000", cwd=tmp_path, code="USAGE")
    closed = free_port()
    line = failing(
        cli,
        *("serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", "store-down"),
        *("--artifact-url", f"s3://KEY:SECRET-SECRET@127.0.0.1:{closed}/bucket"),
        *("--log-level", "error"),
        cwd=tmp_path,
        code="ARTIFACT_STORE_UNAVAILABLE",
    )
    assert "SECRET-SECRET" not in line
    failing(
        cli,
        *("serve", "--host", "no-such-host.invalid", "--port", "0", "--data-dir", "data"),
        cwd=tmp_path,
        code="ADDRESS_NOT_AVAILABLE",
    )
    assert not (tmp_path / "data").exists()


def test_ctrl_c_is_one_line_too(cli: Edgesync, tmp_path: Path) -> None:
    """SIGINT while the command waits for a server that accepted and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(COMMAND_TIMEOUT)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        process = subprocess.Popen(
            [*cli.argv, "nodes", "list", "--server", url],
            env=cli.env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            connection, _ = silent.accept()  # the request is on its way: it now waits
            with connection:
                process.send_signal(signal.SIGINT)
                _, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130
    # click answers ^C with a newline first, as shells do; then the one line.
    line = one_line(process.returncode, stderr.lstrip("\n"), "INTERRUPTED")
    assert line == "error: interrupted (INTERRUPTED)"
