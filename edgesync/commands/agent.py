"""``edgesync agent`` (run the edge agent), ``edgesync agent status`` and ``edgesync invoke``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

DATA_DIR = click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGESYNC_AGENT_DATA_DIR",
    help="Credentials, artifacts and the node's edge.db live here.",
)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not k=v", param_hint="--label")
        labels[key] = value
    return labels


@click.group(invoke_without_command=True)
@click.option("--server", envvar="EDGESYNC_SERVER", help="Control plane URL.")
@DATA_DIR
@click.option("--enrollment-token", envvar="EDGESYNC_ENROLLMENT_TOKEN", help="First start only.")
@click.option("--name", help="Node name (default: the host name).")
@click.option("--region")
@click.option("--label", "labels", multiple=True, help="k=v, repeatable.")
@click.option(
    "--poll-interval", type=click.FloatRange(min=0.05), help="Seconds (default: the server's)."
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "wasmedge", "wasmtime"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--gateway",
    default="127.0.0.1:8700",
    show_default=True,
    help="HOST:PORT of the function gateway.",
)
@click.option("--no-gateway", is_flag=True, help="Do not serve functions over HTTP.")
@click.option(
    "--function-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.01)
)
@click.option("--function-memory-mb", default=128, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True),
    help="CA bundle for a TLS control plane.",
)
@click.option("--once", is_flag=True, help="Sync once; exit 0 when converged, 1 otherwise.")
@click.option(
    "--mqtt/--no-mqtt",
    default=True,
    show_default=True,
    help="Listen for MQTT push notifications when the control plane offers them.",
)
@click.option(
    "--mqtt-url",
    envvar="EDGESYNC_MQTT_URL",
    help="mqtt://host:port to listen on instead of the broker the registration named.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.pass_context
def agent(
    ctx: click.Context,
    server: str | None,
    data_dir: Path,
    enrollment_token: str | None,
    name: str | None,
    region: str | None,
    labels: tuple[str, ...],
    poll_interval: float | None,
    runtime: str,
    gateway: str,
    no_gateway: bool,
    function_timeout: float,
    function_memory_mb: int,
    ca_file: str | None,
    once: bool,
    mqtt: bool,
    mqtt_url: str | None,
    log_level: str,
) -> None:
    """Run the edge agent: converge this node on the control plane's target."""
    ctx.obj = {"data_dir": data_dir}
    if ctx.invoked_subcommand is not None:
        return
    from agent.config import AgentConfig
    from agent.credentials import Credentials

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not server:
        stored = Credentials.load(data_dir)
        if stored is None:
            raise click.UsageError("--server is required on the first start")
        server = stored.server
    config = AgentConfig(
        server=server,
        data_dir=data_dir,
        enrollment_token=enrollment_token,
        name=name,
        region=region,
        labels=_labels(labels),
        poll_interval_seconds=poll_interval,
        runtime=runtime,
        gateway=None if no_gateway else gateway,
        function_timeout_seconds=function_timeout,
        function_memory_mb=function_memory_mb,
        ca_file=ca_file,
        once=once,
        mqtt=mqtt,
        mqtt_url=mqtt_url or None,
    )
    config.validate()
    from agent.main import run

    # Failures raise and are rendered once, as ``error: MESSAGE (CODE)``, by edgesync.cli.
    sys.exit(run(config))


@agent.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Print the node's state as JSON."""
    from agent.status import read_status

    click.echo(json.dumps(read_status(ctx.obj["data_dir"]), indent=2, sort_keys=True))


@click.command()
@DATA_DIR
@click.argument("name")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "wasmedge", "wasmtime"]),
    default="auto",
    show_default=True,
)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.01))
@click.option("--memory-mb", default=128, show_default=True, type=click.IntRange(1, 4096))
def invoke(data_dir: Path, name: str, runtime: str, timeout: float, memory_mb: int) -> None:
    """Run deployed function NAME with stdin as its input; print its stdout."""
    from agent.status import invoke_local

    os.umask(0o077)  # a module compiled here lands in the node's private data dir
    output = invoke_local(data_dir, name, sys.stdin.buffer.read(), runtime, timeout, memory_mb)
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
