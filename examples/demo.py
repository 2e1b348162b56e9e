#!/usr/bin/env python3
"""edgesync, the whole system in one script: ``make demo``.

On the embedded defaults (SQLite and a folder for the control plane, a libsql
file per node) and with nothing but ``make install``:

* ``edgesync serve`` on a free port with a throwaway data dir;
* an enrollment token (``edgesync token create``) and two ``edgesync agent``
  processes, edge-a and edge-b, each with its own data dir and gateway port;
* release 1, auto-release (the v1 behaviour): schema v1 + ``hello`` 1.0.0 (and
  ``greet`` 1.0.0 when examples/build/greet.wasm is built) reach both nodes at once;
* auto-release off, then release 2 made of schema v2 and ``hello`` 2.0.0 together,
  rolled out through a canary wave of one node, then the rest;
* release 3, whose ``hello`` 3.0.0 traps: on the canary its error rate (from the
  agent's heartbeats) stops the rollout, which gives the canary release 2 back,
  schema included (migration 3's down_sql runs in the same transaction as the
  function swap); the other node never sees release 3;
* a summary, then SIGTERM to the agents and the server.

Every command is printed (``$ edgesync ...``), so the output doubles as a tour of
the CLI. Every wait has a timeout; on failure the logs' tails are printed and the
exit status is 1.

    python examples/demo.py                                          # this python's edgesync
    python examples/demo.py --edgesync "python3 dist/edgesync.pyz"   # the zipapp
    python examples/demo.py --keep                                   # keep data and logs

The agents run with ``--runtime auto``: WasmEdge when ``$EDGESYNC_WASMEDGE`` names
one (``EDGESYNC_WASMEDGE=$(build/wasmedge.sh) make demo``) or ``wasmedge`` is on
PATH, the bundled wasmtime otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STARTUP_TIMEOUT = 60.0  # a zipapp's first run unpacks itself
CONVERGE_TIMEOUT = 30.0  # for a release to reach the nodes, or a failure to be reported
CLI_TIMEOUT = 60.0
POLL_INTERVAL = 0.5  # the agents' --poll-interval
WAIT_STEP = 0.2  # how often the demo looks
GREETING = "hello from edgesync v1: "  # in examples/hello.wat; v2 and v3 change the digit

T = TypeVar("T")
# The tour runs the commands it shows; without these tools it says what it does instead.
CURL = shutil.which("curl")
SQLITE3 = shutil.which("sqlite3")


class DemoError(Exception):
    pass


# -- output ---------------------------------------------------------------------------


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def say(actor: str, text: str) -> None:
    print(f"  {actor:<8} {text}", flush=True)


def note(text: str) -> None:
    print(f"  # {text}", flush=True)


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [[c.upper() for c in columns], *rows]
    for line in lines:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def clip(text: str | None, width: int = 90) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


class Shell:
    """Prints commands as a reader would type them in the work dir (the subprocesses' cwd)."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def path(self, value: str) -> str:
        for root in (f"{self.work}/", f"{REPO}/"):
            value = value.replace(root, "")
        return value

    def show(self, argv: list[str], suffix: str = "", secret: str | None = None) -> None:
        words = [quote(self.path(arg)) for arg in argv]
        if secret is not None:
            words = [w.replace(secret, "$ENROLLMENT_TOKEN") for w in words]
        print(f"  $ {' '.join(words)}{suffix}", flush=True)

    def run(self, argv: list[str]) -> str:
        """Show ``argv`` and run exactly it in the work dir; its stdout, or DemoError."""
        self.show(argv)
        result = subprocess.run(
            argv, cwd=self.work, capture_output=True, timeout=CLI_TIMEOUT, check=False
        )
        out = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise DemoError(f"{argv[0]} exited {result.returncode}: {err or out}")
        return out


def quote(word: str) -> str:
    """``shlex.quote``, but SQL with single quotes reads as a person would type it."""
    if "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


def resolve_command(words: list[str]) -> list[str]:
    """``--edgesync`` as given, with the files it names made absolute.

    The subprocesses run in the work dir, so ``python3 dist/edgesync.pyz`` must name
    the zipapp relative to where the demo was started, not to the work dir.
    """
    if not words:
        raise DemoError("--edgesync is empty")
    resolved = []
    for index, word in enumerate(words):
        path = Path(word).expanduser()
        if not word.startswith("-") and (os.sep in word or path.is_file()) and path.exists():
            # absolute(), not resolve(): a venv's python is a symlink, and following it
            # would run the base interpreter, without the venv's edgesync.
            resolved.append(str(path.absolute()))
        elif index == 0 and shutil.which(word) is None:
            raise DemoError(f"--edgesync: {word!r} is neither a file nor a command on PATH")
        else:
            resolved.append(word)
    return resolved


# -- plumbing -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, str]:
    """One request with urllib: the status and the body as text (error statuses too)."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = CONVERGE_TIMEOUT) -> T:
    """Call ``check`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(WAIT_STEP)


@dataclass
class Service:
    """A long-running edgesync subprocess whose output goes to a log file."""

    name: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    env: dict[str, str] | None = None  # on top of os.environ

    def spawn(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the demo
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_healthy(self, url: str) -> str | None:
        """GET ``url`` until 200 (its body) or the process exits (None)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                return None
            try:
                status, body = http("GET", url, timeout=2)
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.1)
        raise DemoError(f"{self.name}: {url} not healthy after {STARTUP_TIMEOUT:.0f} s")

    def start(self, build_argv: Callable[[int], list[str]], health_path: str, shell: Shell) -> str:
        """Start on a free port, and on another one if it was taken in the meantime."""
        for _ in range(5):
            self.port = free_port()
            self.spawn(build_argv(self.port), shell.work, self.env)
            body = self.wait_healthy(f"http://127.0.0.1:{self.port}{health_path}")
            if body is not None:
                return body
            if "address already in use" not in self.log().lower():
                raise DemoError(f"{self.name} exited at start")
            note(f"port {self.port} was taken in the meantime; trying another")
        raise DemoError(f"{self.name}: no free port found")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit status, None if never run."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise DemoError(f"{self.name} ignored SIGTERM for {timeout:.0f} s") from None
        return self.process.returncode


# -- the actors -----------------------------------------------------------------------


class Operator:
    """The operator's CLI: ``edgesync ...`` with EDGESYNC_SERVER and EDGESYNC_TOKEN set."""

    def __init__(self, edgesync: list[str], shell: Shell) -> None:
        self.edgesync = edgesync
        self.shell = shell
        self.env: dict[str, str] = {}

    def run(self, *args: str, show: bool = True, stdin: bytes = b"") -> str:
        if show:
            self.shell.show(["edgesync", *args])
        result = subprocess.run(
            [*self.edgesync, *args],
            cwd=self.shell.work,
            env={**os.environ, **self.env},
            input=stdin,
            capture_output=True,
            timeout=CLI_TIMEOUT,
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise DemoError(f"edgesync {' '.join(args)} exited {result.returncode}: {stderr}")
        return result.stdout.decode(errors="replace")

    def run_json(self, *args: str, show: bool = True) -> Any:
        return json.loads(self.run(*args, show=show))

    def nodes(self) -> dict[str, dict[str, Any]]:
        """``edgesync nodes list --json`` by node name."""
        return {node["name"]: node for node in self.run_json("nodes", "list", "--json", show=False)}

    def history(self, node_id: str) -> list[dict[str, Any]]:
        """The node's sync records, newest first."""
        records: list[dict[str, Any]] = self.run_json(
            "nodes", "show", node_id, "--history", show=False
        )["sync_history"]
        return records


class EdgeNode(Service):
    """One ``edgesync agent``: its data dir, its gateway, its edge.db."""

    def __init__(self, name: str, work: Path) -> None:
        super().__init__(name, work / f"{name}.log")
        self.home = work / name
        self.node_id = ""
        self.runtime = ""

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enroll(self, edgesync: list[str], server_url: str, token: str, shell: Shell) -> None:
        """Start the agent; on its first start it registers with the enrollment token."""

        def argv(port: int) -> list[str]:
            args = [
                "agent",
                *("--server", server_url),
                *("--data-dir", self.home.name),
                *("--enrollment-token", token),
                *("--name", self.name),
                *("--poll-interval", str(POLL_INTERVAL)),
                *("--runtime", "auto"),
                *("--gateway", f"127.0.0.1:{port}"),
            ]
            shell.show(["edgesync", *args], " &", secret=token)
            return [*edgesync, *args]

        # The gateway answers once the node has registered and opened its state.
        self.runtime = json.loads(self.start(argv, "/healthz", shell))["runtime"]

    def why_runtime(self) -> str:
        """The agent's own words on what ``--runtime auto`` chose (its log line)."""
        for line in self.log().splitlines():
            if "runtime: " in line:
                return line.split("runtime: ", 1)[1]
        return self.runtime

    def invoke(self, function: str, body: str, shell: Shell) -> str:
        url = f"{self.gateway}/functions/{function}"
        if CURL:  # what is shown is what runs
            return shell.run(
                ["curl", "-sS", "--fail-with-body", "--data-binary", body, url]
            ).strip()
        print(f"  POST {url}  (body {body!r}, sent with urllib: no curl here)", flush=True)
        try:
            status, text = http("POST", url, body.encode())
        except OSError as exc:
            raise DemoError(f"{self.name}: gateway unreachable: {exc}") from exc
        if status != 200:
            raise DemoError(f"{self.name}: POST /functions/{function} -> {status}: {text}")
        return text.strip()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Read edge.db (an ordinary SQLite file) beside the running agent."""
        uri = f"file:{self.home / 'edge.db'}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    def write(self, sql: str, shell: Shell) -> None:
        """Write to edge.db as an application on the node would."""
        database = f"{self.home.name}/edge.db"
        if SQLITE3:  # what is shown is what runs; the agent may hold the write lock a moment
            shell.run(["sqlite3", "-cmd", ".timeout 10000", database, sql])
            return
        print(f"  {database} <- {sql}  (with Python's sqlite3: no sqlite3 CLI here)", flush=True)
        connection = sqlite3.connect(self.home / "edge.db", timeout=10)
        try:
            with connection:
                connection.execute(sql)
        finally:
            connection.close()


def build_hello(work: Path, version: int) -> Path:
    """examples/hello.wat with the greeting's version changed, compiled with wat2wasm."""
    import wasmtime

    text = (HERE / "hello.wat").read_text()
    if GREETING not in text:
        raise DemoError("examples/hello.wat no longer holds the v1 greeting")
    path = work / f"hello-v{version}.wasm"
    path.write_bytes(wasmtime.wat2wasm(text.replace(GREETING, f"hello from edgesync v{version}: ")))
    return path


def build_trap() -> bytes:
    """A WASI command whose ``_start`` traps at once: a function that always fails."""
    import wasmtime

    return bytes(
        wasmtime.wat2wasm(
            '(module (memory (export "memory") 1) (func (export "_start") unreachable))'
        )
    )


def refs(functions: list[dict[str, Any]]) -> str:
    return " ".join(f"{f['name']}@{f['version']}" for f in functions) or "-"


# -- the story ------------------------------------------------------------------------


class Demo:
    def __init__(self, edgesync: list[str], work: Path) -> None:
        self.edgesync = edgesync
        self.work = work
        self.shell = Shell(work)
        self.server = Service("serve", work / "serve.log")
        self.nodes = [EdgeNode("edge-a", work), EdgeNode("edge-b", work)]
        self.operator = Operator(edgesync, self.shell)
        self.schema = 0
        self.functions: dict[str, str] = {}  # the target: name -> version
        self.greet = HERE / "build" / "greet.wasm"
        self.good: dict[str, Any] = {}  # release 2, where the canary comes back to

    def run(self) -> None:
        started = time.monotonic()
        heading("edgesync demo: one control plane, two edge agents, releases and a canary")
        note(f"working in {self.work}: paths are relative to it, examples/... to the repository")
        note(f"edgesync here is: {shlex.join(self.edgesync)}")
        self.start_server()
        self.enroll()
        self.release_1()
        self.release_2()
        self.release_3()
        self.summary()
        self.stop()
        heading(f"Done in {time.monotonic() - started:.1f} s")

    def start_server(self) -> None:
        heading("The control plane, on its embedded defaults (SQLite + a folder)")
        admin_token = os.urandom(18).hex()
        self.server.env = {"EDGESYNC_ADMIN_TOKEN": admin_token}

        def argv(port: int) -> list[str]:
            args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
            args += ["--data-dir", "server", "--no-access-log", "--rollout-interval", "1"]
            self.shell.show(["edgesync", *args], " &")
            return [*self.edgesync, *args]

        started = time.monotonic()
        self.server.start(argv, "/healthz", self.shell)
        url = f"http://127.0.0.1:{self.server.port}"
        say("serve", f"healthy at {url} after {time.monotonic() - started:.1f} s")
        self.operator.env = {"EDGESYNC_SERVER": url, "EDGESYNC_TOKEN": admin_token}
        note("the operator's commands read the server and the admin token from the environment")
        print(f"  $ export EDGESYNC_SERVER={url} EDGESYNC_TOKEN=...", flush=True)

    def enroll(self) -> None:
        heading("Two edge nodes enroll")
        token = self.operator.run_json("token", "create", "--max-uses", "2", "--ttl", "600")
        say("operator", f"enrollment token for 2 nodes, expires {token['expires_at']}")
        print("  $ ENROLLMENT_TOKEN=...  # the token above", flush=True)
        server_url = self.operator.env["EDGESYNC_SERVER"]
        for node in self.nodes:
            node.enroll(self.edgesync, server_url, token["token"], self.shell)
            node.node_id = json.loads(
                self.operator.run("agent", "--data-dir", node.home.name, "status")
            )["node_id"]
            say(node.name, f"registered as node {node.node_id}")
            say(node.name, f"runtime (auto): {node.why_runtime()}; gateway {node.gateway}")
        if all(node.runtime == "wasmtime" for node in self.nodes):
            note("for WasmEdge: EDGESYNC_WASMEDGE=$(build/wasmedge.sh) make demo")
        for line in self.operator.run("nodes", "list").splitlines():
            print(f"  {line}", flush=True)

    def release_1(self) -> None:
        heading("Release 1: schema v1 + hello 1.0.0 to both nodes")
        self.add_schema("greetings table", HERE / "schema" / "001_greetings.sql")
        note("hello-v1.wasm is examples/hello.wat compiled with wasmtime.wat2wasm")
        self.upload("hello", "1.0.0", build_hello(self.work, 1))
        if self.greet.exists():
            self.upload("greet", "1.0.0", self.greet)
        else:
            note("examples/build/greet.wasm is not built (build/build_examples.sh): no greet")
        self.wait_state(self.nodes, self.schema, self.functions)
        note("each node's gateway serves the functions: POST /functions/NAME")
        self.invoke_hello({"edge-a": 1, "edge-b": 1})
        if self.greet.exists():
            for node in self.nodes:
                answer = json.loads(node.invoke("greet", "edge fleet", self.shell))
                say(
                    node.name,
                    f"greeting={answer['greeting']!r} method={answer['method']} "
                    f"path={answer['path']} body_bytes={answer['body_bytes']}",
                )
        note("the same without HTTP, from the node's data dir:")
        home = self.nodes[0].home.name
        print(f"  $ echo -n cli | edgesync invoke --data-dir {home} hello", flush=True)
        output = self.operator.run("invoke", "--data-dir", home, "hello", stdin=b"cli", show=False)
        say(self.nodes[0].name, output.strip())

    def release_2(self) -> None:
        heading("Release 2: schema v2 and hello 2.0.0 as one release, through a canary")
        fleet = self.operator.run_json("fleet", "set", "--auto-release", "off")
        say(
            "operator",
            f"auto-release {'on' if fleet['auto_release'] else 'off'}: "
            "from now on only rollouts move nodes",
        )
        self.add_schema(
            "greeting language",
            HERE / "schema" / "002_greetings_lang.sql",
            HERE / "schema" / "002_greetings_lang.down.sql",
        )
        self.upload("hello", "2.0.0", build_hello(self.work, 2), requires_schema=2)
        release = self.release("schema v2 + hello 2.0.0")
        note("nothing moved yet: both nodes still run release 1")
        self.invoke_hello({"edge-a": 1, "edge-b": 1})
        canary = self.canary(release)
        rollout = self.operator.run_json(
            "rollout", "start", release["id"], "--waves", "1,100%", "--max-failures", "0"
        )
        self.wait_state([canary], 2, {"hello": "2.0.0", **self.others()})
        say(canary.name, "the canary took schema v2 and hello 2.0.0 in one transaction")
        self.wait_rollout(rollout["id"], "completed")
        self.wait_state(self.nodes, 2, {"hello": "2.0.0", **self.others()})
        self.invoke_hello({"edge-a": 2, "edge-b": 2})
        self.good = release

    def release_3(self) -> None:
        heading("Release 3: hello 3.0.0 fails on the canary; the rollout rolls it back")
        self.add_schema(
            "moods", HERE / "schema" / "003_moods.sql", HERE / "schema" / "003_moods.down.sql"
        )
        broken = self.work / "hello-v3.wasm"
        broken.write_bytes(build_trap())
        note("hello-v3.wasm traps on every call (a bug that passed every upload check)")
        self.upload("hello", "3.0.0", broken, requires_schema=3)
        release = self.release("schema v3 + hello 3.0.0")
        canary = self.canary(release)
        other = next(node for node in self.nodes if node is not canary)
        canary.write("INSERT INTO greetings (name) VALUES ('ada')", self.shell)
        rollout = self.operator.run_json(
            "rollout", "start", release["id"], "--waves", "1,100%",
            "--observe", "30", "--max-error-rate", "5%",
        )  # fmt: skip
        self.wait_state([canary], 3, {"hello": "3.0.0", **self.others()})
        say(canary.name, f"edge.db tables: {', '.join(self.tables(canary))}")
        note("the canary's users call hello; each failure is counted for its next heartbeat")
        for _ in range(3):
            status, _ = http("POST", f"{canary.gateway}/functions/hello", b"x")
            say(canary.name, f"POST /functions/hello -> {status}")
        self.wait_rollout(rollout["id"], "rolled_back")
        self.wait_state([canary], 2, {"hello": "2.0.0", **self.others()})
        say(
            canary.name,
            f"back on release {self.good['number']}: "
            f"edge.db tables {', '.join(self.tables(canary))}",
        )
        names = [row[0] for row in canary.query("SELECT name FROM greetings")]
        if "moods" in self.tables(canary) or "ada" not in names:
            raise DemoError("the rollback should drop moods and keep the greetings")
        say(canary.name, f"its data is kept: greetings {names}")
        self.invoke_hello({"edge-a": 2, "edge-b": 2})
        versions = {row[0] for row in other.query("SELECT version FROM _edgesync_migrations")}
        if 3 in versions:
            raise DemoError(f"{other.name} should never have seen release 3")
        say(other.name, f"never touched by release 3: schema {max(versions)}, hello 2.0.0")
        for line in self.operator.run("rollout", "list").splitlines():
            print(f"  {line}", flush=True)

    def summary(self) -> None:
        heading("Summary")
        self.shell.show(["edgesync", "nodes", "list", "--json"])
        fleet = self.operator.nodes()
        numbers = {
            r["id"]: r["number"]
            for r in self.operator.run_json("release", "list", "--json", show=False)
        }
        rows = []
        for node in self.nodes:
            seen = fleet[node.name]
            rows.append(
                [
                    node.name,
                    node.node_id[:8],
                    node.runtime,
                    seen["status"],
                    str(numbers.get(seen["release_id"], "-")),
                    str(seen["current_schema_version"]),
                    refs(seen["functions"]),
                ]
            )
        print_table(["node", "id", "runtime", "status", "release", "schema", "functions"], rows)
        self.shell.show(["edgesync", "release", "list"])
        for line in self.operator.run("release", "list", show=False).splitlines():
            print(f"  {line}", flush=True)

    def stop(self) -> None:
        heading("Stopping: SIGTERM to the agents, then to the server")
        for service in [*self.nodes, self.server]:
            assert service.process is not None
            print(f"  $ kill -TERM {service.process.pid}", flush=True)
            started = time.monotonic()
            code = service.stop()
            say(service.name, f"exited {code} after {time.monotonic() - started:.1f} s")
            if code != 0:
                raise DemoError(f"{service.name} exited {code} on SIGTERM")

    # -- steps within the steps -----------------------------------------------------

    def add_schema(self, description: str, path: Path, down: Path | None = None) -> None:
        version = str(self.schema + 1)
        args = ["schema", "add", "--version", version, "--description", description]
        args += ["--up", str(path), *(("--down", str(down)) if down else ())]
        self.operator.run(*args)
        self.schema += 1

    def upload(self, name: str, version: str, path: Path, requires_schema: int = 0) -> None:
        needs = ("--requires-schema", str(requires_schema)) if requires_schema else ()
        answer = self.operator.run_json("upload", name, version, str(path), *needs)
        size, digest = answer["size_bytes"], answer["sha256"][:12]
        say("operator", f"{name} {version}: {size} bytes, sha256 {digest}…")
        self.functions[name] = version

    def release(self, notes: str) -> dict[str, Any]:
        """A release of the current schema and functions, and its diff."""
        functions = [f"--function={name}@{v}" for name, v in sorted(self.functions.items())]
        release: dict[str, Any] = self.operator.run_json(
            "release", "create", "--schema", str(self.schema), *functions, "--notes", notes
        )
        for line in self.operator.run("release", "show", release["id"]).splitlines():
            print(f"  {line}", flush=True)
        return release

    def canary(self, release: dict[str, Any]) -> EdgeNode:
        """The dry run's first wave: the node that gets ``release`` first."""
        dry = self.operator.run_json(
            "rollout", "start", release["id"], "--waves", "1,100%", "--dry-run"
        )
        first = dry["waves"][0]["node_ids"][0]
        canary = next(node for node in self.nodes if node.node_id == first)
        actions = ", ".join(
            f"{a['type']} {a.get('name', '')}{'@' if 'name' in a else ''}{a['version']}"
            for a in dry["changes"][first]
        )
        say("operator", f"dry run: wave 1 is {canary.name} alone; it would {actions}")
        return canary

    def others(self) -> dict[str, str]:
        """The target's functions besides hello (greet, when built)."""
        return {name: v for name, v in self.functions.items() if name != "hello"}

    def wait_state(self, nodes: list[EdgeNode], schema: int, functions: dict[str, str]) -> None:
        """Until every one of ``nodes`` reports ``schema`` and ``functions``."""
        want = " ".join(f"{name}@{v}" for name, v in sorted(functions.items()))
        names = " and ".join(node.name for node in nodes)
        self.shell.show(["edgesync", "nodes", "list", "--json"])
        verb = "report" if len(nodes) > 1 else "reports"
        note(f"repeated until {names} {verb} schema {schema}, {want}")
        started = time.monotonic()
        seen_last: dict[str, dict[str, Any]] = {}

        def arrived() -> dict[str, dict[str, Any]] | None:
            fleet = self.operator.nodes()
            seen_last.update(fleet)
            for node in nodes:
                seen = fleet.get(node.name)
                if seen is None or seen["current_schema_version"] != schema:
                    return None
                if {f["name"]: f["version"] for f in seen["functions"]} != functions:
                    return None
            return fleet

        try:
            fleet = wait_for(f"{names} to report schema {schema}, {want}", arrived)
        except DemoError as exc:
            last = "; ".join(
                f"{n}: schema {s['current_schema_version']}, {refs(s['functions'])}, {s['status']}"
                for n, s in sorted(seen_last.items())
            )
            raise DemoError(f"{exc} (last reported: {last or 'no nodes'})") from None
        elapsed = time.monotonic() - started
        for node in nodes:
            seen = fleet[node.name]
            say(
                node.name,
                f"schema {seen['current_schema_version']}, {refs(seen['functions'])}"
                f"  ({elapsed:.1f} s)",
            )

    def wait_rollout(self, rollout_id: str, state: str) -> None:
        """Until the rollout is in ``state``; then its status, a bar per wave."""
        self.shell.show(["edgesync", "rollout", "status", rollout_id, "--watch"])
        started = time.monotonic()

        def reached() -> dict[str, Any] | None:
            shown = self.operator.run_json("rollout", "status", rollout_id, "--json", show=False)
            if shown["state"] not in ("running", "paused") and shown["state"] != state:
                raise DemoError(f"the rollout ended {shown['state']}, not {state}")
            return shown if shown["state"] == state else None

        wait_for(f"the rollout to be {state}", reached)
        for line in self.operator.run("rollout", "status", rollout_id, show=False).splitlines():
            print(f"  {line}", flush=True)
        say("serve", f"rollout {state} after {time.monotonic() - started:.1f} s")

    def tables(self, node: EdgeNode) -> list[str]:
        rows = node.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name"
        )
        return [row[0] for row in rows]

    def invoke_hello(self, versions: dict[str, int]) -> None:
        for node in self.nodes:
            output = node.invoke("hello", node.name, self.shell)
            say(node.name, output)
            if f"edgesync v{versions[node.name]}:" not in output:
                raise DemoError(f"{node.name} should run hello v{versions[node.name]}")

    # -- when things go wrong -------------------------------------------------------

    def diagnose(self) -> None:
        """The tails of every log and each agent's own status, on stderr."""
        for service in [self.server, *self.nodes]:
            tail = "\n".join(service.log().splitlines()[-30:]) or "(empty)"
            print(f"\n-- {service.name}: end of {service.log_path} --\n{tail}", file=sys.stderr)
        for node in self.nodes:
            status = node.home / "agent-status.json"
            if status.exists():
                print(f"\n-- {node.name}: {status} --", file=sys.stderr)
                print(status.read_text(errors="replace"), file=sys.stderr)

    def cleanup(self) -> None:
        for service in [*self.nodes, self.server]:
            try:
                service.stop(timeout=5)
            except DemoError as exc:
                print(f"demo: {exc}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description="edgesync end-to-end demo")
    parser.add_argument(
        "--edgesync",
        default=f"{shlex.quote(sys.executable)} -m edgesync",
        help='how to run edgesync (default: this python\'s; e.g. "python3 dist/edgesync.pyz")',
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data and logs)")
    args = parser.parse_args()
    try:
        edgesync = resolve_command(shlex.split(args.edgesync))
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="edgesync-demo-"))
    demo = Demo(edgesync, work)
    try:
        demo.run()
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, DemoError | subprocess.TimeoutExpired):
            print(f"\ndemo failed: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        demo.diagnose()
        return 1
    finally:
        demo.cleanup()
        if args.keep:
            print(f"\n  (kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
