"""Benchmark 3: how fast a release reaches a fleet, with MQTT push and with polling only.

One ``edgesync serve --mqtt`` (embedded SQLite, folder store, embedded broker,
``--poll-interval 30``) and 50 real agents: ``agent.loop.Agent`` objects on the
wasmtime runtime without a gateway, 25 per worker process (this file run with
``worker``). For each run a new version of one function is uploaded; the result
is the time from the upload's response until the control plane has recorded the
ack of every node (``GET /api/v1/nodes``, read every 50 ms), with the per-node
distribution.

* push: the agents listen on the broker (as ``edgesync agent`` does by default);
* poll only: the same agents with ``--no-mqtt``, on the default 30 s interval
  (±10 % jitter), so one run takes about 30 s.

It also reports the serve process's memory per connected MQTT client: VmRSS with
no MQTT client, with the 50 agents connected, and with ``--extra-clients`` more
bare MQTT connections (raw CONNECT + SUBSCRIBE, logged in with the nodes' tokens).

Run alone: ``.venv/bin/python bench/mqtt_convergence.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    REPO,
    BenchError,
    Server,
    call,
    edgesync_serve,
    expect,
    free_port,
    machine_info,
    mib,
)
from bench.common import rss_bytes as _rss

DOC = REPO / "docs" / "benchmarks.md"
START = "<!-- bench:mqtt:start -->"
END = "<!-- bench:mqtt:end -->"

POLL_INTERVAL = 30
READY_TIMEOUT = 300.0


@dataclass
class Run:
    mode: str  # push | poll
    seconds_all: float  # upload response -> the last node's ack recorded
    per_node: list[float]  # each node's ack, seconds after the upload response

    @property
    def p50(self) -> float:
        return statistics.median(self.per_node)

    @property
    def p90(self) -> float:
        ordered = sorted(self.per_node)
        return ordered[max(0, round(0.9 * len(ordered)) - 1)]


@dataclass
class MqttResult:
    nodes: int
    workers: int
    push_runs: list[Run] = field(default_factory=list)
    poll_runs: list[Run] = field(default_factory=list)
    rss_no_clients: int = 0
    rss_agents: int = 0  # with the agents' MQTT connections
    rss_extra: int = 0  # with --extra-clients more connections too
    extra_clients: int = 0
    connected_agents: int = 0

    @property
    def per_agent_connection(self) -> float:
        return (self.rss_agents - self.rss_no_clients) / max(1, self.connected_agents)

    @property
    def per_extra_connection(self) -> float:
        return (self.rss_extra - self.rss_agents) / max(1, self.extra_clients)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_agent_connection"] = self.per_agent_connection
        data["per_extra_connection"] = self.per_extra_connection
        return data


# -- the parent: server, workers, measurements -------------------------------------------


def rss(pid: int) -> int:
    """VmRSS of ``pid``: the median of five samples 0.2 s apart."""
    samples = []
    for _ in range(5):
        time.sleep(0.2)
        samples.append(_rss(pid) or 0)
    return int(statistics.median(samples))


def module(tag: int) -> bytes:
    import wasmtime

    wat = f'(module (func (export "_start")) (global (export "tag") i32 (i32.const {tag})))'
    return bytes(wasmtime.wat2wasm(wat))


def upload(server: Server, name: str, version: str, tag: int) -> None:
    boundary = f"bench-{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (("name", name), ("version", version))
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="module"; filename="f.wasm"\r\n'
        "Content-Type: application/wasm\r\n\r\n".encode()
        + module(tag)
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    headers = {
        **server.admin_headers(),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    expect(
        call(server.base, "POST", "/api/v1/functions", headers=headers, body=b"".join(parts)),
        201,
        "upload",
    )


def node_versions(server: Server, name: str) -> dict[str, str | None]:
    reply = expect(
        call(server.base, "GET", "/api/v1/nodes?limit=1000", headers=server.admin_headers()),
        200,
        "GET /api/v1/nodes",
    )
    versions: dict[str, str | None] = {}
    for node in reply.json()["nodes"]:
        found = [f["version"] for f in node["functions"] if f["name"] == name]
        versions[node["id"]] = found[0] if found else None
    return versions


def measure(server: Server, mode: str, version: str, tag: int, nodes: int, limit: float) -> Run:
    upload(server, "bench", version, tag)
    started = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < nodes:
        now = time.monotonic()
        if now - started > limit:
            raise BenchError(f"{mode}: {len(seen)}/{nodes} nodes on {version} after {limit:.0f} s")
        for node_id, current in node_versions(server, "bench").items():
            if current == version and node_id not in seen:
                seen[node_id] = now - started
        time.sleep(0.05)
    per_node = sorted(seen.values())
    return Run(mode, per_node[-1], per_node)


@contextmanager
def workers(
    server: Server, workdir: Path, nodes: int, count: int, mqtt: bool
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` worker processes running ``nodes`` agents in all; yields once all are ready."""
    token = ""
    if not (workdir / "agents" / "w0-0" / "node.json").exists():
        body = {"max_uses": nodes, "ttl_seconds": 3600}
        reply = call(
            server.base,
            "POST",
            "/api/v1/enrollment-tokens",
            headers=server.admin_headers(),
            body=body,
        )
        token = expect(reply, 201, "enrollment token").json()["token"]
    per_worker = [nodes // count + (1 if i < nodes % count else 0) for i in range(count)]
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for index, size in enumerate(per_worker):
            log_path = workdir / f"worker-{index}-{'push' if mqtt else 'poll'}.log"
            logs.append(log_path)
            argv = [
                PYTHON,
                str(Path(__file__).resolve()),
                "worker",
                *("--server", server.base, "--dir", str(workdir / "agents")),
                *("--prefix", f"w{index}", "--count", str(size)),
                *(("--enrollment-token", token) if token else ()),
                "--mqtt" if mqtt else "--no-mqtt",
            ]
            with log_path.open("wb") as log:
                processes.append(
                    subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=_env())
                )
        for process, log_path in zip(processes, logs, strict=True):
            assert process.stdout is not None
            line = process.stdout.readline().decode()
            if not line.startswith("ready"):
                tail = log_path.read_text(errors="replace")[-2000:]
                raise BenchError(f"a worker did not get ready: {line!r}\n{tail}")
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run(
    workdir: Path,
    *,
    nodes: int = 50,
    processes: int = 2,
    push_runs: int = 3,
    poll_runs: int = 1,
    extra_clients: int = 1000,
) -> MqttResult:
    mqtt_port = free_port()
    result = MqttResult(nodes, processes, extra_clients=extra_clients)
    extra = ["--mqtt", "--mqtt-listen", f"127.0.0.1:{mqtt_port}"]
    extra += ["--poll-interval", str(POLL_INTERVAL)]
    with edgesync_serve(workdir, extra_args=extra) as server:
        tag = 0
        # Poll only first: the agents enroll, converge, and sit without MQTT.
        with workers(server, workdir, nodes, processes, mqtt=False):
            time.sleep(1.0)
            result.rss_no_clients = rss(server.pid)
            for i in range(poll_runs):
                tag += 1
                run_ = measure(server, "poll", f"1.0.{tag}", tag, nodes, POLL_INTERVAL * 2.5)
                result.poll_runs.append(run_)
                print(f"  poll only, run {i + 1}: all {nodes} in {run_.seconds_all:.2f} s")
        with workers(server, workdir, nodes, processes, mqtt=True):
            connected = server.metrics().get("edgesync_mqtt_clients", 0.0)
            result.connected_agents = int(connected)
            time.sleep(1.0)
            result.rss_agents = rss(server.pid)
            for i in range(push_runs):
                tag += 1
                time.sleep(1.0)  # every agent is asleep on its 30 s interval
                run_ = measure(server, "push", f"1.0.{tag}", tag, nodes, POLL_INTERVAL * 2.5)
                result.push_runs.append(run_)
                print(f"  push, run {i + 1}: all {nodes} in {run_.seconds_all:.2f} s")
            if extra_clients:
                result.rss_extra = extra_connections(server, workdir, mqtt_port, extra_clients)
    return result


def extra_connections(server: Server, workdir: Path, port: int, count: int) -> int:
    """Open ``count`` more MQTT logins (the nodes' own credentials); the server's RSS then."""
    credentials = [
        json.loads(path.read_text()) for path in sorted(workdir.glob("agents/*/node.json"))
    ]
    pairs = [(c["node_id"], c["token"]) for c in credentials]
    argv = [PYTHON, str(Path(__file__).resolve()), "clients", "--port", str(port)]
    argv += ["--count", str(count)]
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(pairs).encode() + b"\n")
    process.stdin.flush()
    line = process.stdout.readline().decode()
    try:
        if not line.startswith("ready"):
            raise BenchError(f"the extra clients did not connect: {line!r}")
        connected = server.metrics().get("edgesync_mqtt_clients", 0.0)
        print(f"  {int(connected)} MQTT clients connected")
        time.sleep(1.0)
        return rss(server.pid)
    finally:
        process.stdin.close()
        process.wait(30)


def summary_lines(result: MqttResult) -> list[str]:
    lines = [f"MQTT push, {result.nodes} agents in {result.workers} processes:"]
    for label, runs in (("push", result.push_runs), ("poll only", result.poll_runs)):
        for run_ in runs:
            lines.append(
                f"  {label}: all acked in {run_.seconds_all:.2f} s"
                f" (p50 {run_.p50:.2f} s, p90 {run_.p90:.2f} s)"
            )
    lines.append(
        f"  serve RSS: {mib(result.rss_no_clients):.1f} MiB with no MQTT client,"
        f" {mib(result.rss_agents):.1f} MiB with {result.connected_agents}"
        f" ({result.per_agent_connection / 1024:.1f} KiB each)"
    )
    if result.extra_clients:
        lines.append(
            f"  + {result.extra_clients} bare connections: {mib(result.rss_extra):.1f} MiB"
            f" ({result.per_extra_connection / 1024:.1f} KiB each)"
        )
    return lines


def results_markdown(result: MqttResult) -> str:
    push_max = max(r.seconds_all for r in result.push_runs) if result.push_runs else float("nan")
    out = [
        f"{result.nodes} agents in {result.workers} processes; seconds from the upload's"
        " response to each node's recorded ack.",
        "",
        "| mode | all nodes acked | p50 node | p90 node |",
        "|---|---:|---:|---:|",
    ]
    for label, runs in (("push", result.push_runs), ("poll only (30 s)", result.poll_runs)):
        for i, run_ in enumerate(runs, 1):
            out.append(
                f"| {label}, run {i} | **{run_.seconds_all:.2f} s** | {run_.p50:.2f} s"
                f" | {run_.p90:.2f} s |"
            )
    out += [
        "",
        f"* Goal: with push, every one of the {result.nodes} within 2 s — measured"
        f" **{push_max:.2f} s** at worst.",
        "",
        "| serve process | VmRSS | per MQTT connection |",
        "|---|---:|---:|",
        f"| no MQTT client | {mib(result.rss_no_clients):.1f} MiB | |",
        f"| {result.connected_agents} agents connected | {mib(result.rss_agents):.1f} MiB"
        f" | {result.per_agent_connection / 1024:.1f} KiB |",
    ]
    if result.extra_clients:
        out.append(
            f"| + {result.extra_clients} bare connections | {mib(result.rss_extra):.1f} MiB"
            f" | {result.per_extra_connection / 1024:.1f} KiB |"
        )
    out.append("")
    return "\n".join(out)


def docs_section(result: MqttResult, mode: str) -> str:
    machine = machine_info()
    header = (
        f"Last run: **{machine['date']}** (`{mode}`) on {machine['cpu']},"
        f" {machine['cores']} cores, {machine['python']}."
    )
    return f"{header}\n\n{results_markdown(result)}"


def write_docs(section: str) -> None:
    """Replace this benchmark's own part of docs/benchmarks.md (between its markers)."""
    text = DOC.read_text()
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## 3. MQTT push: results\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{section.rstrip()}\n{END}{tail}")


def from_run_all(*, quick: bool, write: bool) -> int:
    """``bench/run_all.py`` runs this last; it writes its own section of the docs."""
    print("MQTT push:")
    settings = QUICK if quick else {}
    with tempfile.TemporaryDirectory(prefix="edgesync-bench-mqtt-") as tmp:
        try:
            result = run(Path(tmp), **settings)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    print("\n".join(summary_lines(result)))
    if write:
        write_docs(docs_section(result, "quick" if quick else "full"))
        print(f"results written to {DOC.relative_to(REPO)}")
    return 0


QUICK: dict[str, Any] = {"nodes": 10, "push_runs": 1, "poll_runs": 0, "extra_clients": 100}


# -- worker: agents in this process --------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    from agent.config import AgentConfig
    from agent.loop import Agent
    from agent.main import push_listener
    from agent.runtime import open_runtime

    agents: list[Agent] = []
    root = Path(args.dir)
    for i in range(args.count):
        data_dir = root / f"{args.prefix}-{i}"
        config = AgentConfig(
            server=args.server,
            data_dir=data_dir,
            enrollment_token=args.enrollment_token,
            name=data_dir.name,
            runtime="wasmtime",
            gateway=None,
            mqtt=args.mqtt,
        )
        agents.append(Agent(config, open_runtime("wasmtime", data_dir)))
    await asyncio.gather(*(agent.open() for agent in agents))
    listeners = [push_listener(agent.config, agent) for agent in agents]
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    for listener in listeners:
        if listener is not None:
            listener.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    deadline = time.monotonic() + READY_TIMEOUT
    while not all(listener is None or listener.connected for listener in listeners):
        if time.monotonic() > deadline:
            raise SystemExit("MQTT listeners did not connect")
        await asyncio.sleep(0.05)
    while not all(agent._last is not None and agent._last.ok for agent in agents):
        if time.monotonic() > deadline:
            raise SystemExit("agents did not converge")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the sync that follows each MQTT login is over too
    print("ready", flush=True)
    await stop.wait()
    for agent in agents:
        agent.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    for listener in listeners:
        if listener is not None:
            await listener.stop()
    for agent in agents:
        await agent.close()


# -- clients: bare MQTT connections ----------------------------------------------------------


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(kind: int, body: bytes) -> bytes:
    length, out = len(body), bytearray([kind])
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


async def bare_client(port: int, node_id: str, token: str) -> asyncio.StreamWriter:
    """CONNECT (keepalive 0: the broker never times us out), SUBSCRIBE to the two topics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    flags = 0x02 | 0x80 | 0x40
    client_id = f"bench-{uuid.uuid4().hex[:12]}"
    connect = _string("MQTT") + bytes([4, flags, 0, 0])
    connect += _string(client_id) + _string(node_id) + _string(token)
    writer.write(_packet(0x10, connect))
    if (await reader.readexactly(4))[3] != 0:
        raise SystemExit("login refused")
    topics = [f"edgesync/nodes/{node_id}/notify", "edgesync/fleet/notify"]
    subscribe = (1).to_bytes(2, "big") + b"".join(_string(t) + b"\x00" for t in topics)
    writer.write(_packet(0x82, subscribe))
    suback = await reader.readexactly(2 + 2 + len(topics))
    if any(code >= 0x80 for code in suback[4:]):
        raise SystemExit("subscription refused")
    return writer


async def clients(args: argparse.Namespace) -> None:
    pairs = json.loads(sys.stdin.readline())
    writers = []
    for i in range(args.count):
        node_id, token = pairs[i % len(pairs)]
        writers.append(await bare_client(args.port, node_id, token))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    work = sub.add_parser("worker")
    work.add_argument("--server", required=True)
    work.add_argument("--dir", required=True)
    work.add_argument("--prefix", required=True)
    work.add_argument("--count", type=int, required=True)
    work.add_argument("--enrollment-token")
    work.add_argument("--mqtt", action=argparse.BooleanOptionalAction, default=True)
    bare = sub.add_parser("clients")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--count", type=int, required=True)
    parser.add_argument("--quick", action="store_true", help="10 agents, 1 push run, no poll run")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--push-runs", type=int, default=3)
    parser.add_argument("--poll-runs", type=int, default=1)
    parser.add_argument("--extra-clients", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.command == "worker":
        asyncio.run(worker(args))
        return 0
    if args.command == "clients":
        asyncio.run(clients(args))
        return 0
    if args.quick:
        args.nodes, args.push_runs = QUICK["nodes"], QUICK["push_runs"]
        args.poll_runs, args.extra_clients = QUICK["poll_runs"], QUICK["extra_clients"]
    with tempfile.TemporaryDirectory(prefix="edgesync-bench-mqtt-") as tmp:
        try:
            result = run(
                Path(tmp),
                nodes=args.nodes,
                processes=args.processes,
                push_runs=args.push_runs,
                poll_runs=args.poll_runs,
                extra_clients=args.extra_clients,
            )
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    print("\n".join(summary_lines(result)))
    if args.write_docs:
        write_docs(docs_section(result, "quick" if args.quick else "full"))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
