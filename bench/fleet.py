"""Benchmark 9: a fleet of N distinct nodes polling one control plane (issue 10, item 6).

The simulator itself is ``bench/fleet_sim.py`` (enrolment, phases, CPU) over the raw
HTTP client of ``bench/fleet_load.py``; this file runs it for one or more fleets and
reports. ``make bench`` runs 100,000 nodes on SQLite and 50,000 on PostgreSQL with two
serve replicas (a new connection per interval), and 15,000 on SQLite with kept
connections; ``--quick`` runs 2,000 of each, for iterating.

Run alone: ``.venv/bin/python bench/fleet.py [--quick] [--backend sqlite|postgres]
[--nodes N] [--connections new|kept] [--interval-kind poll|pair] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import background_load
from bench.fleet_sim import (
    AGENT_INTERVAL_S,
    CORES_AT_70,
    GOAL_CPU_US,
    GOAL_P99_MS,
    FleetResult,
    FleetSettings,
    simulate,
)
from bench.support import Report, run_header

KEY, HEADING = "fleet", "9. Fleet simulator: results"


@dataclass
class FleetRuns:
    runs: list[FleetResult] = field(default_factory=list)
    load: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load, "runs": [r.to_dict() for r in self.runs]}


def default_fleets(quick: bool) -> list[FleetSettings]:
    """The issue's two fleets (a new connection per interval: 100,000 kept connections
    need more file descriptors than ``ulimit -n`` allows here), and a smaller SQLite
    fleet with kept connections, as agents now keep them."""
    if quick:
        kept = dataclasses.replace(FleetSettings.quick("sqlite"), connections="kept")
        return [FleetSettings.quick("sqlite"), FleetSettings.quick("postgres"), kept]
    return [
        FleetSettings(nodes=100_000, backend="sqlite"),
        FleetSettings(nodes=50_000, backend="postgres", replicas=2),
        FleetSettings(nodes=15_000, backend="sqlite", connections="kept"),
    ]


def run(workdir: Path, fleets: list[FleetSettings], log: Any = print) -> FleetRuns:
    result = FleetRuns(load=background_load(0.5))
    for index, settings in enumerate(fleets):
        log(
            f"fleet: {settings.nodes:,} nodes, {settings.backend} x{settings.replicas},"
            f" {settings.connections} connections, interval = {settings.interval_kind}"
        )
        scratch = workdir / f"fleet-{index}"
        scratch.mkdir()
        result.runs.append(asyncio.run(simulate(scratch, settings, log)))
    return result


# -- reporting -------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.1f} ms"


def _label(s: FleetSettings) -> str:
    replicas = f", {s.replicas} replicas" if s.replicas > 1 else ""
    return f"{s.backend.replace('sqlite', 'SQLite').replace('postgres', 'PostgreSQL')}{replicas}"


def summary_lines(result: FleetRuns) -> list[str]:
    lines = []
    for r in result.runs:
        s, steady, probe = r.settings, r.phase("steady"), r.measured
        pct = steady.outcome.percentiles_ms()
        recovered = r.phase("recovery").recovered_after_s()
        lines += [
            f"fleet {_label(s)}, {s.nodes:,} nodes ({s.connections} connections,"
            f" interval = {s.interval_kind}):",
            f"  CPU per node interval ({probe.name}, {probe.rate:,.0f}/s): {r.cpu_us:.0f} µs (serve"
            f" {probe.cpu_us('serve'):.0f} + database {probe.cpu_us('db'):.0f}; goal"
            f" ≤ {GOAL_CPU_US:.0f}) → projected {r.projected_nodes:,.0f} nodes at 30 s",
            f"  p50 {pct['p50']:.1f} ms, p99 {pct['p99']:.1f} ms (goal ≤ {GOAL_P99_MS:.0f}),"
            f" p99.9 {pct['p999']:.1f} ms; errors {sum(steady.outcome.errors.values())};"
            f" RSS {r.rss_per_node:,.0f} B per node",
            f"  1.5x capacity: {_errors(r.phase('overload'))};"
            f" recovery: p99 under {GOAL_P99_MS:.0f} ms "
            + ("never in the phase" if recovered is None else f"after {recovered:.0f} s"),
        ]
    return lines


def _errors(phase: Any) -> str:
    errors = phase.outcome.errors
    if not errors:
        return "no errors"
    return ", ".join(f"{count:,} {kind}" for kind, count in sorted(errors.items()))


def results_markdown(result: FleetRuns, mode: str) -> str:
    out = [
        run_header(mode, result.load),
        "",
        "Measured commit: " + ", ".join(sorted({f"`{r.commit}`" for r in result.runs})) + ".",
        "",
        "| fleet | nodes | connections, interval | CPU per node interval (serve + database)"
        " | p50 at 70% | p99 at 70% | p99.9 at 70% | errors at 70% | RSS per node"
        " | projected nodes at 30 s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.runs:
        s, steady, probe = r.settings, r.phase("steady"), r.measured
        pct = steady.outcome.percentiles_ms()
        out.append(
            f"| {_label(s)} | {s.nodes:,} | {s.connections}, {s.interval_kind}"
            f" | **{r.cpu_us:.0f} µs** ({probe.cpu_us('serve'):.0f} +"
            f" {probe.cpu_us('db'):.0f}) | {_ms(pct['p50'])} | **{_ms(pct['p99'])}**"
            f" | {_ms(pct['p999'])} | {sum(steady.outcome.errors.values())}"
            f" | {r.rss_per_node / 1024:.1f} KiB | {r.projected_nodes:,.0f} |"
        )
    out += ["", "Phases (rate asked and done, latency from each interval's scheduled start):", ""]
    out += [
        "| fleet | phase | asked | done | p50 | p99 | p99.9 | errors | CPU per interval"
        " | cores: serve, db, generator, other processes |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in result.runs:
        for p in r.phases:
            pct = p.outcome.percentiles_ms()
            out.append(
                f"| {_label(r.settings)} | {p.name} | {p.rate:,.0f}/s | {p.done / p.wall_s:,.0f}/s"
                f" | {_ms(pct['p50'])} | {_ms(pct['p99'])} | {_ms(pct['p999'])} | {_errors(p)}"
                f" | {p.cpu_us():.0f} µs | {p.serve_cpu_s / p.wall_s:.2f},"
                f" {p.db_cpu_s / p.wall_s:.2f}, {p.client_cpu_s / p.wall_s:.2f},"
                f" {p.other_cpu_s / p.wall_s:.2f} |"
            )
    out += ["", *_notes(result), ""]
    return "\n".join(out)


def _notes(result: FleetRuns) -> list[str]:
    notes = [
        f"* **Capacity is projected, not driven:** the load generator shares this 2-core box,"
        f" so the CPU per node interval is measured at a rate the box can drive (the"
        " fastest of `probe` and `steady` that ran without a queue: no errors, p99 under"
        " 1 s; a queued probe is repeated at half the rate), and the nodes at"
        f" {AGENT_INTERVAL_S:.0f} s are {CORES_AT_70} CPU-seconds"
        " a second (70% of 2 cores) divided by it. Goal: ≤"
        f" {GOAL_CPU_US:.0f} µs per node interval for serve and its database together, p99"
        f" ≤ {GOAL_P99_MS:.0f} ms at 70% load.",
    ]
    for r in result.runs:
        recovered = r.phase("recovery").recovered_after_s()
        overload = r.phase("overload")
        notes.append(
            f"* {_label(r.settings)}: enrolment of {r.settings.nodes:,} nodes took"
            f" {r.enroll_seconds:.0f} s (`--bcrypt-cost 4`); at 1.5× capacity for"
            f" {overload.seconds:.0f} s {overload.done / overload.wall_s:,.0f} intervals/s"
            f" completed ({_errors(overload)}); afterwards, back at 70%, every second's p99"
            " was under 50 ms "
            + (
                "**not within the recovery phase**"
                if recovered is None
                else f"after {recovered:.0f} s"
            )
            + f". Serve's capacity from the probe: {r.capacity:,.0f} intervals/s on its core."
        )
        if r.enrol_anomalies:
            found = ", ".join(f"{n:,} × {kind}" for kind, n in r.enrol_anomalies.items())
            label = _label(r.settings)
            notes.append(f"* **Server anomalies during enrolment** ({label}): {found}.")
    return notes


REPORT = Report(KEY, HEADING, "edgesync-bench-fleet-", summary_lines, results_markdown)


def from_run_all(*, quick: bool, write: bool, json_path: Path | None = None) -> int:
    print("fleet simulator:")
    fleets = default_fleets(quick)
    return REPORT(lambda tmp: run(tmp, fleets), quick=quick, write=write, json_path=json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 nodes, short phases")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], help="one fleet only")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--replicas", type=int)
    parser.add_argument("--connections", choices=["new", "kept"])
    parser.add_argument("--interval-kind", choices=["poll", "pair"])
    parser.add_argument("--probe-rate", type=float, help="intervals/s of the probe phase")
    args = REPORT.parse_args(parser, argv)
    fleets = default_fleets(args.quick)
    if args.backend:
        fleets = [f for f in fleets if f.backend == args.backend]
    overrides = {
        name: getattr(args, name)
        for name in ("nodes", "replicas", "connections", "interval_kind", "probe_rate")
        if getattr(args, name) is not None
    }
    fleets = [dataclasses.replace(f, **overrides) for f in fleets]
    return REPORT.from_args(lambda tmp: run(tmp, fleets), args)


if __name__ == "__main__":
    sys.exit(main())
