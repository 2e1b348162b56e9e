"""Run every benchmark, print a summary, and record the results in docs/benchmarks.md.

``make bench`` runs this file. Results are ratios against a baseline measured
in the same run (and sizes for context), never pass/fail: the goals are
printed beside the figures.

Options may also come from the environment (for ``make bench``):
``EDGESYNC_BENCH_QUICK=1``, ``EDGESYNC_BENCH_DURATION``, ``EDGESYNC_BENCH_RUNS``,
``EDGESYNC_BENCH_CONNECTIONS``, ``EDGESYNC_BENCH_SIZE_MIB``,
``EDGESYNC_BENCH_QUIET_WAIT``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import poll, upload_rss
from bench.common import REPO, BenchError, background_load, machine_info, mib

DOC = REPO / "docs" / "benchmarks.md"
# Benchmarks 4-8 (agent and backends): modules of bench/ that also run alone; each
# writes its own marker-delimited block of docs/benchmarks.md and bench/out/NAME.json.
EXTRA = {
    "poll-pg": "poll_postgres",
    "gateway": "gateway_invoke",
    "apply": "apply_plan",
    "agent-rss": "agent_rss",
    "s3": "s3_transfer",
    # Issue 10: a fleet of 100,000 nodes on SQLite and 50,000 on PostgreSQL with two
    # replicas (many minutes; --quick: 2,000 each), and what kept connections cost.
    "fleet": "fleet",
    # Issue 10 item 7: a release to 10,000 nodes (--quick: 1,000), plans back to back.
    "plan-fanout": "plan_fanout",
    "connections": "connections",
}
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=env("EDGESYNC_BENCH_QUICK", "") not in ("", "0"),
        help="1 x 3 s poll runs after a 1 s warm-up, fleets of 2,000 nodes instead of"
        " 100,000 and 50,000 (does not touch the docs unless --write-docs)",
    )
    parser.add_argument("--duration", type=float, default=_float(env("EDGESYNC_BENCH_DURATION")))
    parser.add_argument("--runs", type=int, default=_int(env("EDGESYNC_BENCH_RUNS")))
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--connections", type=int, default=_int(env("EDGESYNC_BENCH_CONNECTIONS")))
    parser.add_argument("--size-mib", type=int, default=_int(env("EDGESYNC_BENCH_SIZE_MIB")) or 60)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=_float(env("EDGESYNC_BENCH_QUIET_WAIT")),
        help="seconds to wait, before each poll run, for other processes to calm down",
    )
    parser.add_argument("--only", choices=["poll", "upload", *EXTRA], help="run one benchmark")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--write-docs", dest="write_docs", action="store_true", default=None)
    docs.add_argument("--no-write-docs", dest="write_docs", action="store_false")
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "bench" / "out" / "latest.json",
        help="where to write every raw figure (default: bench/out/latest.json)",
    )
    args = parser.parse_args(argv)
    if args.write_docs is None:
        args.write_docs = not args.quick
    return args


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def poll_settings(args: argparse.Namespace) -> poll.PollSettings:
    settings = poll.PollSettings.quick() if args.quick else poll.PollSettings()
    if args.duration is not None:
        settings.duration = args.duration
    if args.runs is not None:
        settings.runs = args.runs
    if args.warmup is not None:
        settings.warmup = args.warmup
    if args.connections is not None:
        settings.connections = args.connections
    if args.quiet_wait is not None:
        settings.quiet_wait = args.quiet_wait
    return settings


# -- docs/benchmarks.md ----------------------------------------------------------------


def results_markdown(
    machine: dict[str, str],
    load: dict[str, float],
    mode: str,
    polls: poll.PollResult | None,
    upload: upload_rss.UploadResult | None,
) -> str:
    out = [
        f"Last run: **{machine['date']}** (`{mode}`).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu']} |",
        f"| cores | {machine['cores']} |",
        f"| kernel | {machine['kernel']} |",
        f"| Python | {machine['python']} (aiohttp {machine['aiohttp']}) |",
        f"| load from other processes before the run | {_load_text(load)} |",
        "",
    ]
    if polls is not None:
        s = polls.settings
        bare, edge = polls.bare, polls.edgesync
        out += [
            "### No-change polls",
            "",
            f"`wrk -t1 -c{s.connections} -d{s.duration:g}s --latency` on core {s.client_cpu},"
            f" servers on core {s.server_cpu}; {s.warmup:g} s warm-up each, then"
            f" {s.runs} interleaved run(s) each; medians of"
            f" {'the undisturbed ones' if edge.only_clean else 'all of them'}"
            f" ({len(bare.counted)} bare, {len(edge.counted)} edgesync).",
            "",
            "| server | requests/s | share of bare | p50 | p99 | server CPU per poll |"
            " lowest core share |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| bare aiohttp 304 (baseline) | {bare.rps:,.0f} | 100% | {bare.p50_ms:.2f} ms"
            f" | {bare.p99_ms:.2f} ms | {bare.cpu_us_per_request:.1f} µs | {bare.cpu_share:.0%} |",
            f"| `edgesync serve`, converged node | {edge.rps:,.0f} | **{polls.ratio:.1%}**"
            f" | {edge.p50_ms:.2f} ms | {edge.p99_ms:.2f} ms | {edge.cpu_us_per_request:.1f} µs"
            f" | {edge.cpu_share:.0%} |",
            "",
            f"* Goal: at least 50% of the bare handler — measured **{polls.ratio:.1%}** in"
            f" requests/s, {polls.cpu_ratio:.1%} per CPU second of the server.",
            f"* Every poll a 304: **{'yes' if polls.all_304 else 'NO'}** —"
            f" {polls.not_modified_served:,} answered `not_modified` for"
            f" {polls.polls_counted:,} completed by wrk (the rest were in flight when wrk"
            f" stopped); {polls.full_plans_served} full plans, {polls.non_304_responses}"
            " other statuses.",
            f"* bcrypt calls during the runs (`edgesync_bcrypt_calls_total`):"
            f" **{polls.bcrypt_calls}** (goal 0).",
            f"* Runs repeated because other processes took CPU (server under"
            f" {s.min_core_share:.0%} of its core, or others over {s.max_foreign_load:g} core):"
            f" {len(bare.disturbed) + len(edge.disturbed)} (not in the medians).",
            *(
                [
                    "* **Warning:** all runs of a server were disturbed by other processes"
                    " (the retries ran out): the requests/s figures are unreliable; the"
                    " per-CPU-second ratio is the fairer one. Rerun on a quiet machine."
                ]
                if polls.disturbed
                else []
            ),
            "",
        ]
    if upload is not None:
        out += [
            "### Upload RSS",
            "",
            f"A valid {mib(upload.module_bytes):.0f} MiB module uploaded with"
            f" `ApiClient.upload`; server idle RSS {mib(upload.rss_idle):.1f} MiB;"
            " VmRSS sampled every 20 ms.",
            "",
            "| upload | time | throughput | RSS before | RSS peak | peak growth |"
            " validator child peak |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in upload.runs:
            out.append(
                f"| {r.label} | {r.seconds:.2f} s | {upload.throughput(r):.0f} MiB/s"
                f" | {mib(r.rss_before):.1f} MiB | {mib(r.rss_peak):.1f} MiB"
                f" | **+{mib(r.growth):.1f} MiB** | {mib(r.validator_peak):.0f} MiB |"
            )
        out += [
            "",
            f"* Goal: server RSS growth below 20 MiB — measured **+{mib(upload.peak_growth):.1f}"
            f" MiB**, {upload.peak_growth / upload.module_bytes:.1%} of the module's size.",
            "* The validator child (a separate, short-lived process) is not part of the"
            " server's RSS.",
            "",
        ]
    return "\n".join(out)


DOC_SKELETON = f"""# Benchmarks

Run them with `make bench`.

## Results

{START}
{END}
"""


def _load_text(load: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0%}" for name, value in sorted(load.items()))


def write_docs(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else DOC_SKELETON
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Results\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(f"{head}{START}\n{section.rstrip()}\n{END}{tail}")


# -- main -------------------------------------------------------------------------------


def run_extra(names: list[str], *, quick: bool, write: bool) -> int:
    import importlib

    status = 0
    for name in names:
        module = importlib.import_module(f"bench.{EXTRA[name]}")
        status = module.from_run_all(quick=quick, write=write) or status
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only in EXTRA:
        return run_extra([args.only], quick=args.quick, write=args.write_docs)
    machine = machine_info()
    mode = "quick" if args.quick else "full"
    print(
        f"edgesync benchmarks ({mode}) on {machine['cpu']}, {machine['cores']} cores,"
        f" {machine['kernel']}, {machine['python']}"
    )
    load = background_load()
    print(f"load from other processes before the run: {_load_text(load)}")
    if max(load.values(), default=0.0) > 0.1:
        print("  warning: the machine is busy; absolute figures will be low and noisy")
    polls: poll.PollResult | None = None
    upload: upload_rss.UploadResult | None = None
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="edgesync-bench-") as tmp:
            workdir = Path(tmp)
            if args.only in (None, "poll"):
                print("no-change polls:")
                polls = poll.run(workdir, poll_settings(args))
            if args.only in (None, "upload"):
                print("upload RSS:")
                upload = upload_rss.run(workdir, args.size_mib)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print()
    if polls is not None:
        print("\n".join(poll.summary_lines(polls)))
    if upload is not None:
        print("\n".join(upload_rss.summary_lines(upload)))
    print(f"(total {time.monotonic() - started:.0f} s)")
    if args.write_docs:
        write_docs(results_markdown(machine, load, mode, polls, upload))
        print(f"results written to {DOC.relative_to(REPO)}")
    if args.json:
        raw: dict[str, Any] = {"machine": machine, "load": load, "mode": mode}
        if polls is not None:
            raw["poll"] = polls.to_dict()
        if upload is not None:
            raw["upload"] = upload.to_dict()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"raw figures in {args.json}")
    if args.only is None:  # MQTT push: bench/mqtt_convergence.py, its own section of the docs
        from bench import mqtt_convergence

        status = run_extra(list(EXTRA), quick=args.quick, write=args.write_docs)
        return mqtt_convergence.from_run_all(quick=args.quick, write=args.write_docs) or status
    return 0


if __name__ == "__main__":
    sys.exit(main())
