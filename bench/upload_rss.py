"""Benchmark 2: the server's memory while it receives a large function upload.

``edgesync serve`` (not pinned) receives a valid 60 MiB WebAssembly module,
streamed from disk by :class:`edgesync.client.ApiClient`. A thread samples the
server's VmRSS (``/proc/PID/status``) every 20 ms; the result is the peak growth
over the RSS measured just before the upload, next to the module's size.

Two uploads run on the same server: the first also pays one-time costs (lazy
imports of the upload path, first allocations), the second shows the steady
state. Modules over 4 MiB are validated in a child process
(``appliance/wasm_check.py``): that child's memory is reported apart and is not
part of the server's RSS.

Run alone: ``.venv/bin/python bench/upload_rss.py [--size-mib N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RssSampler, edgesync_serve, mib, rss_bytes

MiB = 1024 * 1024
WRITE_CHUNK = 4 * MiB


@dataclass
class UploadRun:
    label: str
    rss_before: int
    rss_peak: int
    rss_after: int
    validator_peak: int  # the wasm_check child process, not in the server's RSS
    seconds: float
    samples: int

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


@dataclass
class UploadResult:
    module_bytes: int
    rss_idle: int
    runs: list[UploadRun] = field(default_factory=list)

    @property
    def peak_growth(self) -> int:
        return max(run.growth for run in self.runs)

    def throughput(self, run: UploadRun) -> float:
        return mib(self.module_bytes) / run.seconds if run.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "module_bytes": self.module_bytes,
            "rss_idle": self.rss_idle,
            "peak_growth": self.peak_growth,
            "runs": [
                {**asdict(r), "growth": r.growth, "mib_per_s": self.throughput(r)}
                for r in self.runs
            ],
        }


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def large_module(path: Path, total_bytes: int, *, validate: bool = True) -> Path:
    """A valid module of exactly ``total_bytes``: ``(module)`` plus one big custom section.

    A custom section is id 0, its LEB128 size, then a LEB128 name length, the
    name and an opaque payload; validators skip its payload, so the module is
    valid whatever the payload holds. Written in chunks, never whole in memory.
    """
    import wasmtime

    header = wasmtime.wat2wasm("(module)")
    name = b"edgesync.bench.padding"
    named = _leb128(len(name)) + name
    # Section size = len(named) + payload; its LEB128 width depends on its value.
    content = total_bytes - len(header) - 1 - len(named)
    while True:
        size_field = _leb128(content)
        payload = total_bytes - len(header) - 1 - len(size_field) - len(named)
        if len(named) + payload == content:
            break
        content = len(named) + payload
    if payload < 0:
        raise ValueError(f"{total_bytes} bytes is too small for a padded module")
    with path.open("wb") as handle:
        handle.write(header + b"\x00" + size_field + named)
        block = os.urandom(WRITE_CHUNK)
        left = payload
        while left:
            step = min(left, len(block))
            handle.write(block[:step])
            left -= step
    if path.stat().st_size != total_bytes:
        raise AssertionError("padded module has the wrong size")
    if validate:
        # The benchmark process may afford the bytes in memory once.
        wasmtime.Module.validate(wasmtime.Engine(), path.read_bytes())
    return path


def run(workdir: Path, size_mib: int = 60, uploads: int = 2, log: Any = print) -> UploadResult:
    from edgesync.client import ApiClient

    size = size_mib * MiB
    module = large_module(workdir / f"large-{size_mib}mib.wasm", size)
    limit = str(max(64, size_mib + 8))
    with edgesync_serve(workdir, extra_args=["--max-upload-mb", limit]) as serve:
        client = ApiClient(serve.base, serve.admin_token, timeout=300)
        time.sleep(0.5)  # let the freshly started server settle
        idle = rss_bytes(serve.pid) or 0
        result = UploadResult(size, idle)
        for index in range(uploads):
            label = "first (cold)" if index == 0 else f"repeat {index}"
            before = rss_bytes(serve.pid) or 0
            with RssSampler(serve.pid, interval=0.02) as sampler:
                started = time.perf_counter()
                client.upload("bench-large", f"1.0.{index}", module)
                seconds = time.perf_counter() - started
            run_ = UploadRun(
                label=label,
                rss_before=before,
                rss_peak=max(sampler.peak, before),
                rss_after=rss_bytes(serve.pid) or 0,
                validator_peak=sampler.child_peak,
                seconds=seconds,
                samples=len(sampler.samples),
            )
            result.runs.append(run_)
            log(
                f"  upload {label:12s} {mib(size):.0f} MiB in {seconds:.2f} s"
                f" ({result.throughput(run_):.0f} MiB/s), RSS {mib(before):.1f} ->"
                f" peak {mib(run_.rss_peak):.1f} MiB (+{mib(run_.growth):.1f} MiB)"
            )
    return result


def summary_lines(result: UploadResult) -> list[str]:
    lines = [
        f"upload RSS ({mib(result.module_bytes):.0f} MiB module, RSS sampled every 20 ms):",
        f"  server RSS idle {mib(result.rss_idle):.1f} MiB",
    ]
    for run_ in result.runs:
        lines.append(
            f"  {run_.label:12s} +{mib(run_.growth):5.1f} MiB peak growth"
            f" ({mib(run_.rss_before):.1f} -> {mib(run_.rss_peak):.1f} MiB),"
            f" {result.throughput(run_):.0f} MiB/s, validator child peak"
            f" {mib(run_.validator_peak):.0f} MiB"
        )
    lines.append(
        f"  peak growth    {mib(result.peak_growth):.1f} MiB"
        f" = {result.peak_growth / result.module_bytes:.1%} of the module (goal < 20 MiB)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=60)
    parser.add_argument("--uploads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesync-bench-") as tmp:
        result = run(Path(tmp), args.size_mib, args.uploads)
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
