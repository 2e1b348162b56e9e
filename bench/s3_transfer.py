"""Benchmark 8: a 64 MiB module through the S3 artifact store, against the minio SDK alone.

An S3 emulator (moto's server mode, ``python -m moto.server``, a subprocess on
loopback) stands in for MinIO: no MinIO server is installable on these
machines. ``edgesync serve --artifact-url http://KEY:SECRET@127.0.0.1:PORT/…``
(embedded SQLite) stores the module there:

* **upload**: ``edgesync.client.ApiClient.upload`` (what ``edgesync upload``
  does): the module streams to serve, which stages it, hashes it, validates it
  (in a child process above 4 MiB) and puts it into the bucket with the minio
  SDK (16 MiB parts, one at a time);
* **download, direct**: a node's plan names a presigned URL of the object; it
  is fetched straight from the emulator;
* **download, proxy**: serve restarted on the same data dir with
  ``--artifact-delivery proxy``; the plan's URL then points at serve, which
  streams the object from the bucket to the node.

Baseline in the same run, same bytes, same emulator: the minio SDK alone,
``fput_object`` (same part size, one part at a time) and ``get_object``. Every
download reads in 256 KiB chunks and computes the SHA-256 as it goes (as the
agent does) and is checked against the module's.

serve's VmRSS is sampled every 20 ms during the uploads and the proxied
downloads: it stays flat when the bytes are streamed rather than buffered.

Run alone: ``.venv/bin/python bench/s3_transfer.py [--quick] [--size-mib N] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    PYTHON,
    BenchError,
    RssSampler,
    Server,
    background_load,
    call,
    expect,
    free_port,
    mib,
    rss_bytes,
)
from bench.support import Process, Report, median, run_header, spawned
from bench.upload_rss import large_module

KEY, HEADING = "s3", "8. S3 artifact transfer: results"
ACCESS_KEY, SECRET_KEY = "edgesync-bench", "edgesync-bench-secret-0123"
BUCKET, BASELINE_BUCKET = "wasm-functions", "bench-baseline"
PART_SIZE = 16 * 1024 * 1024  # appliance.artifacts.s3.PART_SIZE
CHUNK = 256 * 1024
MiB = 1024 * 1024


@dataclass
class Transfer:
    kind: str  # sdk-put | upload | sdk-get | direct | proxy
    seconds: float
    rss_before: int = 0  # serve's (upload and proxy only)
    rss_peak: int = 0
    validator_peak: int = 0

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


@dataclass
class S3Result:
    size: int
    repeats: int
    transfers: list[Transfer] = field(default_factory=list)
    rss_idle: int = 0
    load: dict[str, float] = field(default_factory=dict)
    moto_version: str = ""

    def of(self, kind: str) -> list[Transfer]:
        return [t for t in self.transfers if t.kind == kind]

    def seconds(self, kind: str) -> float:
        return median([t.seconds for t in self.of(kind)])

    def throughput(self, kind: str) -> float:
        """MiB/s, from the median time."""
        return mib(self.size) / self.seconds(kind)

    def growth(self, kind: str) -> int:
        return max(t.growth for t in self.of(kind))

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "repeats": self.repeats,
            "transfers": [{**asdict(t), "growth": t.growth} for t in self.transfers],
            "rss_idle": self.rss_idle,
            "load": self.load,
            "moto_version": self.moto_version,
        }


# -- the servers -----------------------------------------------------------------------


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[Process]:
    port = free_port()
    base = f"http://{HOST}:{port}"
    command = [PYTHON, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    with spawned("moto", command, workdir, base=base, ready_path="/moto-api/data.json") as p:
        yield p


@contextlib.contextmanager
def serve(
    workdir: Path, data_dir: Path, artifact_url: str, delivery: str, name: str
) -> Iterator[Server]:
    """``edgesync serve`` on ``data_dir`` (kept across restarts), artifacts on S3."""
    port = free_port()
    admin = secrets.token_urlsafe(32)
    command = [PYTHON, "-m", "edgesync", "serve", "--host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data_dir), "--no-access-log", "--log-level", "warning"]
    command += ["--artifact-url", artifact_url, "--artifact-delivery", delivery]
    command += ["--max-upload-mb", "4096"]
    env = dict(os.environ, EDGESYNC_ADMIN_TOKEN=admin)
    base = f"http://{HOST}:{port}"
    with spawned(name, command, workdir, base=base, ready_path="/healthz", env=env) as p:
        server = Server(name, base, p.process, p.log_path, admin_token=admin, data_dir=data_dir)
        yield server


def sdk(endpoint: str) -> Any:
    from minio import Minio

    return Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region="us-east-1")


# -- transfers -------------------------------------------------------------------------


def http_get(url: str, sha256: str, size: int, headers: dict[str, str] | None = None) -> float:
    """GET ``url`` in 256 KiB reads, hashing; check the bytes; return the seconds."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    digest, count = hashlib.sha256(), 0
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or HOST, parts.port, timeout=300)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        if response.status != 200:
            raise BenchError(f"GET {parts.path}: HTTP {response.status}: {response.read(300)!r}")
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            count += len(chunk)
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    if count != size or digest.hexdigest() != sha256:
        raise BenchError(f"GET {parts.path}: {count} bytes, not the module's {size}")
    return seconds


def sdk_get(client: Any, key: str, sha256: str, size: int) -> float:
    digest, count = hashlib.sha256(), 0
    started = time.perf_counter()
    response = client.get_object(BASELINE_BUCKET, key)
    try:
        for chunk in response.stream(CHUNK):
            digest.update(chunk)
            count += len(chunk)
    finally:
        response.close()
        response.release_conn()
    seconds = time.perf_counter() - started
    if count != size or digest.hexdigest() != sha256:
        raise BenchError("minio SDK get_object: the bytes differ from the module's")
    return seconds


def sampled(server: Server, action: Callable[[], Any]) -> tuple[float, RssSampler]:
    with RssSampler(server.pid, interval=0.02) as sampler:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
    return seconds, sampler


def node_plan(server: Server, node: tuple[str, str]) -> list[dict[str, Any]]:
    node_id, token = node
    reply = call(
        server.base,
        "GET",
        f"/api/v1/nodes/{node_id}/sync",
        headers={"Authorization": f"Bearer {token}"},
    )
    actions = expect(reply, 200, "plan").json()["actions"]
    return [a for a in actions if a["type"] == "deploy_function"]


def register(server: Server) -> tuple[str, str]:
    admin = server.admin_headers()
    reply = call(server.base, "POST", "/api/v1/enrollment-tokens", headers=admin, body={})
    enrollment = expect(reply, 201, "enrollment token").json()["token"]
    body = {"name": "bench-s3", "enrollment_token": enrollment}
    answer = expect(call(server.base, "POST", "/api/v1/nodes/register", body=body), 201, "register")
    registered = answer.json()
    return registered["node_id"], registered["token"]


# -- the benchmark ---------------------------------------------------------------------


def run(workdir: Path, size_mib: int = 64, repeats: int = 2, log: Any = print) -> S3Result:
    from edgesync.client import ApiClient

    load = background_load(0.5)
    size = size_mib * MiB
    module = large_module(workdir / f"module-{size_mib}mib.wasm", size)
    sha256 = hashlib.sha256(module.read_bytes()).hexdigest()
    result = S3Result(size, repeats, load=load)
    with contextlib.suppress(Exception):
        import moto

        result.moto_version = moto.__version__
    data_dir = workdir / "serve-data"
    data_dir.mkdir()

    def note(t: Transfer) -> None:
        result.transfers.append(t)
        extra = (
            f", serve RSS {mib(t.rss_before):.1f} -> peak {mib(t.rss_peak):.1f} MiB"
            f" (+{mib(t.growth):.1f})"
            if t.rss_before
            else ""
        )
        log(f"  {t.kind:8s} {t.seconds:6.2f} s  {mib(size) / t.seconds:6.0f} MiB/s{extra}")

    with moto_server(workdir) as emulator:
        endpoint = emulator.base.removeprefix("http://")
        client = sdk(endpoint)
        client.make_bucket(BASELINE_BUCKET)
        url = f"http://{ACCESS_KEY}:{SECRET_KEY}@{endpoint}/{BUCKET}"
        with serve(workdir, data_dir, url, "direct", "serve-direct") as server:
            time.sleep(0.5)
            result.rss_idle = rss_bytes(server.pid) or 0
            api = ApiClient(server.base, server.admin_token, timeout=600)
            for index in range(repeats):
                started = time.perf_counter()
                client.fput_object(
                    BASELINE_BUCKET,
                    f"m-{index}.wasm",
                    str(module),
                    part_size=PART_SIZE,
                    num_parallel_uploads=1,
                )
                note(Transfer("sdk-put", time.perf_counter() - started))
                before = rss_bytes(server.pid) or 0
                upload = functools.partial(api.upload, "bench-s3", f"1.0.{index}", module)
                seconds, sampler = sampled(server, upload)
                note(
                    Transfer(
                        "upload", seconds, before, max(before, sampler.peak), sampler.child_peak
                    )
                )
            node = register(server)
            deploys = node_plan(server, node)
            if len(deploys) != 1 or deploys[0]["sha256"] != sha256:
                raise BenchError(f"unexpected plan: {deploys}")
            direct_url = deploys[0]["download_url"]
            if urlsplit(direct_url).port != moto_port(endpoint):
                raise BenchError(f"direct delivery gave a URL not on the S3 store: {direct_url}")
            for index in range(repeats):
                note(Transfer("sdk-get", sdk_get(client, f"m-{index}.wasm", sha256, size)))
                note(Transfer("direct", http_get(direct_url, sha256, size)))
        with serve(workdir, data_dir, url, "proxy", "serve-proxy") as server:
            deploys = node_plan(server, node)
            proxy_url = deploys[0]["download_url"]
            if not proxy_url.startswith(server.base):
                raise BenchError(f"proxy delivery gave a URL not on serve: {proxy_url}")
            for index in range(repeats):
                before = rss_bytes(server.pid) or 0
                seconds, sampler = sampled(server, lambda: http_get(proxy_url, sha256, size))
                note(Transfer("proxy", seconds, before, max(before, sampler.peak)))
                note(Transfer("sdk-get", sdk_get(client, f"m-{index}.wasm", sha256, size)))
    return result


def moto_port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


# -- reporting -------------------------------------------------------------------------

ROWS = (
    ("upload", "sdk-put", "upload: `ApiClient.upload` → serve → S3", "minio SDK `fput_object`"),
    ("direct", "sdk-get", "download, direct (presigned S3 URL)", "minio SDK `get_object`"),
    ("proxy", "sdk-get", "download, proxied by serve", "minio SDK `get_object`"),
)


def summary_lines(result: S3Result) -> list[str]:
    lines = [
        f"S3 transfer ({mib(result.size):.0f} MiB module, moto {result.moto_version};"
        f" medians of {result.repeats}):"
    ]
    for kind, base, _, _ in ROWS:
        lines.append(
            f"  {kind:8s} {result.throughput(kind):6.0f} MiB/s"
            f" vs SDK {result.throughput(base):6.0f} MiB/s"
            f" = {result.throughput(kind) / result.throughput(base):6.1%}"
            + (
                f"; serve RSS growth max +{mib(result.growth(kind)):.1f} MiB"
                if kind in ("upload", "proxy")
                else ""
            )
        )
    lines.append(f"  serve idle RSS {mib(result.rss_idle):.1f} MiB")
    return lines


def results_markdown(result: S3Result, mode: str) -> str:
    out = [
        run_header(mode, result.load),
        "",
        f"A valid {mib(result.size):.0f} MiB module; S3 is moto {result.moto_version}"
        " (server mode, loopback); medians of"
        f" {result.repeats} transfer(s) each, interleaved with the baseline's; serve's idle"
        f" RSS {mib(result.rss_idle):.1f} MiB, sampled every 20 ms.",
        "",
        "| path | time | throughput | baseline (same bytes) | baseline throughput |"
        " share of baseline | serve RSS growth (max) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for kind, base, label, base_label in ROWS:
        growth = f"+{mib(result.growth(kind)):.1f} MiB" if kind in ("upload", "proxy") else "—"
        out.append(
            f"| {label} | {result.seconds(kind):.2f} s | {result.throughput(kind):.0f} MiB/s"
            f" | {base_label} | {result.throughput(base):.0f} MiB/s"
            f" | **{result.throughput(kind) / result.throughput(base):.1%}** | {growth} |"
        )
    validator = max((t.validator_peak for t in result.of("upload")), default=0)
    steps = ", ".join(
        f"{mib(t.rss_before):.1f} → {mib(t.rss_peak):.1f} MiB" for t in result.of("upload")
    )
    out += [
        "",
        f"* serve's VmRSS during each upload, in order (before → peak): {steps}.",
        "* The upload's time covers the whole request: transfer to serve, staging file,"
        " SHA-256, validation, and the put into the bucket; the validator child"
        f" (peak {mib(validator):.0f} MiB) is a separate process, not in serve's RSS.",
        "* Downloads are checked (size and SHA-256, hashed while reading, by the baseline too).",
        "* moto is a Python emulator and sets the pace of every path here: these ratios"
        " show edgesync's overhead over the SDK against the same server, not MinIO's speed.",
        "",
    ]
    return "\n".join(out)


REPORT = Report(KEY, HEADING, "edgesync-bench-s3-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("S3 transfer:")
    return REPORT(
        lambda tmp: run(tmp, repeats=1 if quick else 2),
        quick=quick,
        write=write,
        json_path=json_path,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one transfer of each kind")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int)
    args = REPORT.parse_args(parser, argv)
    repeats = args.repeats or (1 if args.quick else 2)
    return REPORT.from_args(lambda tmp: run(tmp, args.size_mib, repeats), args)


if __name__ == "__main__":
    sys.exit(main())
