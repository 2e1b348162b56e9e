"""Helpers of the agent integration tests.

A real control plane (``make_app``) on a loopback port of the test's own event
loop, real agents (in-process :class:`agent.loop.Agent` objects, or ``edgesync
agent`` subprocesses), WASM functions built from ``examples/*.wat``, and
probes that read a node's ``edge.db`` with the stdlib ``sqlite3``.

The control plane runs in the test's event loop, so a test must never block
that loop while an agent subprocess needs the server: CLI commands go through
:func:`run_cli` (asyncio subprocesses) and waits through :func:`eventually`.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import wasmtime
from aiohttp import web
from e2e.support import clean_env, free_port, in_ci

from agent.config import AgentConfig
from agent.gateway import make_gateway
from agent.loop import Agent
from agent.main import runtime_for
from agent.runtime import WASMEDGE_ENV, find_wasmedge
from agent.runtime.base import Limits, Runtime
from appliance.app import make_app
from appliance.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ADMIN_TOKEN = "agent-tests-admin-token-0123456789"
# Bounds on waiting, never assertions about speed.
WAIT = 30.0
POLL = "0.2"  # --poll-interval of agent subprocesses

# -- WASM functions ----------------------------------------------------------------


def example(name: str) -> bytes:
    """``examples/<name>.wat`` compiled (examples/build is not in git: build here)."""
    return bytes(wasmtime.wat2wasm((EXAMPLES / f"{name}.wat").read_text()))


def hello(tag: str) -> bytes:
    """examples/hello.wat answering ``hello from edgesync <tag>: `` + the body (tag: 2 chars)."""
    assert len(tag) == 2, "the greeting has a fixed length"
    source = (EXAMPLES / "hello.wat").read_text()
    return bytes(wasmtime.wat2wasm(source.replace("edgesync v1: ", f"edgesync {tag}: ")))


def greeting(tag: str, body: bytes = b"") -> bytes:
    return f"hello from edgesync {tag}: ".encode() + body


# Writes its environment block ("K=V\0K2=V2\0...") to stdout.
ENV_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 64) (i32.const 8192)))
    (i32.store (i32.const 0) (i32.const 8192))
    (i32.store (i32.const 4) (i32.load (i32.const 20)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def env_printer() -> bytes:
    return bytes(wasmtime.wat2wasm(ENV_WAT))


def parse_environ(stdout: bytes) -> dict[str, str]:
    pairs = [item.decode().partition("=") for item in stdout.split(b"\0") if item]
    return {key: value for key, _, value in pairs}


def padded(wasm: bytes, size: int) -> bytes:
    """``wasm`` plus a custom section of filler, so that it is at least ``size`` bytes."""

    def leb128(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    name = b"filler"
    payload = os.urandom(max(0, size - len(wasm)))
    contents = leb128(len(name)) + name + payload
    return wasm + b"\x00" + leb128(len(contents)) + contents


# -- the control plane -------------------------------------------------------------


class ApiError(AssertionError):
    """The control plane answered another status than the test expected."""


class ControlPlane:
    """``make_app`` served on 127.0.0.1 by this event loop, plus the admin's requests."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Serve (again, on the same port after :meth:`stop`: the same data dir and state)."""
        config = ServeConfig(
            host="127.0.0.1",
            port=self.port,
            data_dir=self.data_dir,
            admin_token=ADMIN_TOKEN,
            bcrypt_rounds=4,
            poll_interval_seconds=1,
            access_log=False,
        )
        runner = web.AppRunner(make_app(config), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and the app: the port then refuses connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()

    def artifact_file(self, name: str, version: str) -> Path:
        """Where the embedded folder store keeps a function's bytes."""
        return self.data_dir / "artifacts" / "wasm-functions" / name / version / "function.wasm"

    # -- raw requests ------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN_TOKEN,
        expect: int | None = 200,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = dict(kwargs.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self._session.request(
            method, f"{self.url}{path}", headers=headers, **kwargs
        ) as response:
            raw = await response.read()
            status = response.status
            content_type = response.content_type
        body: Any = raw
        if content_type == "application/json" and raw:
            body = json.loads(raw)
        elif content_type.startswith("text/"):
            body = raw.decode()
        if expect is not None and status != expect:
            raise ApiError(f"{method} {path}: expected {expect}, got {status}: {raw[:2000]!r}")
        return status, body

    async def json(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        return (await self.call(method, path, expect=expect, **kwargs))[1]

    # -- the operator's steps ----------------------------------------------------------

    async def enrollment_token(self, max_uses: int = 1) -> str:
        body = {"max_uses": max_uses, "ttl_seconds": 3600}
        created = await self.json("POST", "/api/v1/enrollment-tokens", 201, json=body)
        return str(created["token"])

    async def upload(self, name: str, version: str, module: bytes) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("name", name)
        form.add_field("version", version)
        form.add_field("module", module, filename="function.wasm", content_type="application/wasm")
        created: dict[str, Any] = await self.json("POST", "/api/v1/functions", 201, data=form)
        return created

    async def add_schema(
        self, version: int, up_sql: str, description: str = "", **extra: Any
    ) -> None:
        body = {
            "version": version,
            "description": description or f"v{version}",
            "up_sql": up_sql,
            **extra,
        }
        await self.json("POST", "/api/v1/schemas", 201, json=body)

    async def delete_function(self, function_id: str) -> None:
        await self.call("DELETE", f"/api/v1/functions/{function_id}", expect=204)

    async def node(self, node_id: str) -> dict[str, Any]:
        node: dict[str, Any] = await self.json("GET", f"/api/v1/nodes/{node_id}")
        return node

    async def nodes(self) -> list[dict[str, Any]]:
        return list((await self.json("GET", "/api/v1/nodes"))["nodes"])

    async def history(self, node_id: str, limit: int = 500) -> list[dict[str, Any]]:
        body = await self.json("GET", f"/api/v1/nodes/{node_id}/sync/history?limit={limit}")
        return list(body["records"])

    async def metrics(self) -> str:
        return str((await self.call("GET", "/metrics", token=None))[1])

    async def node_state(self, node_id: str) -> State:
        """What the control plane believes ``node_id`` runs (from its last ack)."""
        node = await self.node(node_id)
        return State.of(node["current_schema_version"], node["functions"])


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        if sample == name and ",".join(sorted(rest.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


@dataclass(frozen=True)
class State:
    """A node state in a comparable form: schema version and ``{name: version}``."""

    schema_version: int
    functions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, schema_version: int, functions: Iterable[Any]) -> State:
        pairs = []
        for item in functions:
            if isinstance(item, dict):
                pairs.append((item["name"], item["version"]))
            else:
                pairs.append((item.name, item.version))
        return cls(schema_version, tuple(sorted(pairs)))

    @classmethod
    def want(cls, schema_version: int, **functions: str) -> State:
        return cls(schema_version, tuple(sorted(functions.items())))


# -- waiting -----------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Any],
    what: str,
    within: float = WAIT,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Call ``probe`` (sync or async) until it returns a truthy value; return it."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = probe()
            if isinstance(last, Awaitable):
                last = await last
        except (OSError, aiohttp.ClientError, ApiError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose else ""
            pytest.fail(f"gave up waiting for {what}; last: {last!r}{extra}")
        await asyncio.sleep(interval)


async def converged(cp: ControlPlane, node_ids: Iterable[str], want: State, **kw: Any) -> None:
    """Wait until the control plane records every node of ``node_ids`` on ``want``."""
    ids = list(node_ids)

    async def probe() -> bool:
        states = [await cp.node_state(node_id) for node_id in ids]
        return all(state == want for state in states)

    await eventually(probe, f"nodes {ids} to reach {want}", **kw)


# -- in-process agents -------------------------------------------------------------


class FakeClock:
    """An injected :class:`agent.backoff.Clock`: records sleeps, never waits.

    ``offset`` shifts ``time()`` (token expiry); ``on_sleep(n, seconds)`` runs at
    each sleep (the n-th), e.g. to stop the agent or bring a server back.
    """

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int, float], Awaitable[None]] | None = None

    def time(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float, wake: asyncio.Event) -> bool:
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            await self.on_sleep(len(self.sleeps), seconds)
        await asyncio.sleep(0)
        return wake.is_set()


def wasmedge_or_fail() -> None:
    """Skip without WasmEdge; under CI a missing WasmEdge is a failure (both runtimes)."""
    if find_wasmedge() is None:
        reason = (
            "no WasmEdge: set EDGESYNC_WASMEDGE to a wasmedge executable "
            "(build/wasmedge.sh provisions .wasmedge/bin/wasmedge) or put wasmedge on PATH"
        )
        if in_ci():
            pytest.fail(f"CI must test the agent on WasmEdge too: {reason}")
        pytest.skip(reason)


async def new_agent(
    cp: ControlPlane,
    data_dir: Path,
    *,
    name: str | None = None,
    enroll: bool = True,
    runtime: str = "wasmtime",
    clock: FakeClock | None = None,
    rng: Any = None,
    **config: Any,
) -> Agent:
    """An opened in-process agent (enrolled on first use of ``data_dir``)."""
    settings: dict[str, Any] = {
        "server": cp.url,
        "data_dir": data_dir,
        "name": name or data_dir.name,
        "runtime": runtime,
        "gateway": None,
        "poll_interval_seconds": 0.2,
        "function_timeout_seconds": 2.0,
        **config,
    }
    if enroll and not (data_dir / "node.json").exists():
        settings["enrollment_token"] = await cp.enrollment_token()
    agent_config = AgentConfig(**settings)
    instance = runtime_for(agent_config)  # as `edgesync agent` opens it: with its limits
    agent = Agent(agent_config, instance, clock=clock or FakeClock(), rng=rng)
    try:
        await agent.open()
    except BaseException:
        await agent.close()
        raise
    return agent


async def sync_until(cp: ControlPlane, agents: list[Agent], want: State, rounds: int = 20) -> None:
    """Run ``sync_once`` on every agent until the control plane has them all on ``want``."""
    for _ in range(rounds):
        outcomes = [await agent.sync_once() for agent in agents]
        states = [await cp.node_state(agent.node_id) for agent in agents]
        if all(state == want for state in states):
            for agent in agents:
                assert agent.reconciler is not None
                local = await agent.reconciler.local_state()
                assert State.of(local.schema_version, local.functions) == want
            return
    pytest.fail(f"agents did not converge on {want}: {states} after {outcomes}")


GATEWAY_LIMITS = Limits(2.0, 64 * 1024 * 1024)


@asynccontextmanager
async def local_gateway(runtime: Runtime, limits: Limits = GATEWAY_LIMITS) -> AsyncIterator[str]:
    """The agent's gateway app over ``runtime`` on a loopback port; yields its base URL."""
    runner = web.AppRunner(make_gateway(runtime, limits), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- edge.db probes ----------------------------------------------------------------


# edge.db is read and written from another process, as an operator's sqlite3 would:
# the stdlib's SQLite and libsql's are two copies of SQLite, and two copies in one
# process lose each other's POSIX locks (closing one's file descriptor drops the
# other's locks, and it may then delete the WAL under the agent's connection):
# https://www.sqlite.org/howtocorrupt.html#multiple_copies_of_sqlite_linked_into_the_same_application
_PROBE = """
import hashlib, sqlite3, sys
path, mode, statements = sys.argv[1], sys.argv[2], sys.argv[3:]
connection = sqlite3.connect(path, timeout=10)
try:
    if mode == "write":
        for statement in statements:
            connection.execute(statement)
        connection.commit()
        print("None")
    else:
        schema = sorted(connection.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall(), key=repr)
        rows = {}
        for row in schema:
            if row[0] != "table":
                continue
            found = sorted(connection.execute(f'SELECT * FROM "{row[1]}"').fetchall(), key=repr)
            if len(found) > 1000:  # big tables by count and digest
                digest = hashlib.sha256("\\n".join(map(repr, found)).encode()).hexdigest()
                found = {"count": len(found), "sha256": digest}
            rows[row[1]] = found
        print(repr({"schema": schema, "rows": rows}))
finally:
    connection.close()
"""


def _probe(path: Path, mode: str, *statements: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), mode, *statements],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    if result.returncode != 0:
        raise AssertionError(f"sqlite3 on {path} failed:\n{result.stderr}")
    return ast.literal_eval(result.stdout)


def read_db(path: Path) -> dict[str, Any]:
    """Everything in ``edge.db``: schema objects and every table's rows (sorted)."""
    assert path.exists(), path
    result: dict[str, Any] = _probe(path, "read")
    return result


def write_db(path: Path, *statements: str) -> None:
    """Change a node's data behind the agent's back (an operator, an application)."""
    _probe(path, "write", *statements)


def release_view(path: Path, *, history: bool = True) -> dict[str, Any]:
    """The parts of ``edge.db`` a release decides, without times and sync ids.

    One node before a crash and after its recovery, on the same release, has
    equal views. ``history``: include how many releases of what were committed
    (nodes on the same release may have got there in different steps).
    """
    dump = read_db(path)
    rows = dict(dump["rows"])
    migrations = [row[:3] for row in rows.pop("_edgesync_migrations")]  # version, desc, checksum
    functions = [row[:3] for row in rows.pop("_edgesync_functions")]  # name, version, sha256
    # sync_id, schema_version, functions, committed_at
    releases = sorted((row[1], row[2]) for row in rows.pop("_edgesync_releases"))
    view = {
        "schema": dump["schema"],
        "migrations": migrations,
        "functions": functions,
        "data": rows,
    }
    if history:
        view["releases"] = releases
    return view


def db_state(path: Path) -> State:
    return state_of(release_view(path))


def state_of(view: dict[str, Any]) -> State:
    """The node state a :func:`release_view` records."""
    version = max((row[0] for row in view["migrations"]), default=0)
    return State(version, tuple(sorted((row[0], row[1]) for row in view["functions"])))


def cached_modules(data_dir: Path) -> set[str]:
    return {p.stem for p in (data_dir / "artifacts" / "sha256").glob("*.wasm")}


MODULE_NAME = re.compile(r"[0-9a-f]{64}\.wasm")


def stray_files(data_dir: Path) -> list[Path]:
    """Anything under DIR/artifacts but verified modules: partial downloads, temporaries."""
    root = data_dir / "artifacts"
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not (path.parent.name == "sha256" and MODULE_NAME.fullmatch(path.name))
    )


# -- agent subprocesses ------------------------------------------------------------


def edgesync_argv() -> list[str]:
    script = Path(sys.executable).with_name("edgesync")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgesync"]


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = clean_env()
    wasmedge = os.environ.get(WASMEDGE_ENV)
    if wasmedge:
        env[WASMEDGE_ENV] = wasmedge
    env.update(extra or {})
    return env


@dataclass
class AgentProcess:
    """A running ``edgesync agent``."""

    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    gateway_port: int | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        assert self.gateway_port is not None
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def node_id(self) -> str:
        return str(json.loads((self.data_dir / "node.json").read_text())["node_id"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT)

    async def stop(self) -> int:
        """SIGTERM (finish the sync in flight, close); SIGKILL only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode


async def spawn_agent(
    cp: ControlPlane,
    data_dir: Path,
    *,
    enrollment_token: str | None = None,
    runtime: str = "wasmtime",
    gateway: bool = True,
    pause_at: str | None = None,
    args: Iterable[str] = (),
    server: bool = True,
) -> AgentProcess:
    """``edgesync agent`` on ``data_dir``; with a gateway, wait until it answers."""
    for attempt in range(5):
        port = free_port() if gateway else None
        argv = [
            *edgesync_argv(),
            "agent",
            *("--data-dir", str(data_dir)),
            *(("--server", cp.url) if server else ()),
            *("--runtime", runtime, "--poll-interval", POLL, "--log-level", "debug"),
            *(("--gateway", f"127.0.0.1:{port}") if gateway else ("--no-gateway",)),
            *(("--enrollment-token", enrollment_token) if enrollment_token else ()),
            *args,
        ]
        extra = {"EDGESYNC_TEST_PAUSE_AT": pause_at} if pause_at else {}
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path = data_dir.parent / f"{data_dir.name}-agent-{time.monotonic_ns()}.log"
        process = _popen(argv, agent_env(extra), log_path)
        running = AgentProcess(data_dir, process, log_path, port, argv)
        if not gateway:
            return running
        if await _gateway_up(running):
            return running
        await running.stop()
        if "address already in use" not in running.log().lower():
            pytest.fail(f"edgesync agent did not come up (attempt {attempt}):\n{running.log()}")
    pytest.fail("edgesync agent found no free gateway port")


def _popen(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


async def _gateway_up(agent: AgentProcess) -> bool:
    deadline = time.monotonic() + WAIT
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if agent.process.poll() is not None:
                return False
            try:
                async with session.get(f"{agent.gateway}/healthz") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    return False


async def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, within: float = 60
) -> tuple[int, str, str]:
    """``edgesync ARGS`` without blocking the event loop (the control plane lives in it)."""
    process = await asyncio.create_subprocess_exec(
        *edgesync_argv(),
        *args,
        env=agent_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def gateway_call(
    base: str, name: str, body: bytes = b"", **kwargs: Any
) -> tuple[int, bytes, Any]:
    """POST ``base/functions/name``: (status, raw body, JSON body or None)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/functions/{name}", data=body, **kwargs) as response:
            raw = await response.read()
            decoded = json.loads(raw) if response.content_type == "application/json" else None
            return response.status, raw, decoded
