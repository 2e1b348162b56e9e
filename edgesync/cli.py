"""The ``edgesync`` command: one executable for servers, devices and laptops.

Subcommands live in ``edgesync.commands`` and are imported only when invoked,
so ``edgesync --help`` never pays for aiohttp, wasmtime or libsql.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any, NoReturn

import click

from edgesync import __version__

# name -> (module, attribute, one-line help shown by --help without importing)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("edgesync.commands.serve", "serve", "Run the control plane."),
    "migrate": (
        "edgesync.commands.migrate",
        "migrate",
        "Migrate the control-plane database, then exit.",
    ),
    "upload": ("edgesync.commands.operator", "upload", "Upload a WASM function version."),
    "functions": ("edgesync.commands.operator", "functions", "List, show or delete functions."),
    "schema": ("edgesync.commands.operator", "schema", "Add or list schema migrations."),
    "nodes": ("edgesync.commands.operator", "nodes", "List, show, pin or unpin nodes."),
    "token": ("edgesync.commands.operator", "token", "Create enrollment tokens."),
    "release": ("edgesync.commands.release", "release", "Create, list or show releases."),
    "fleet": ("edgesync.commands.fleet", "fleet", "Show or set auto-release."),
    "rollout": ("edgesync.commands.rollout", "rollout", "Start, watch or steer rollouts."),
    "agent": ("edgesync.commands.agent", "agent", "Run the edge agent (and `agent status`)."),
    "invoke": ("edgesync.commands.agent", "invoke", "Run a deployed function locally."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attribute, _ = COMMANDS[name]
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "EDGESYNC", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="edgesync")
def cli() -> None:
    """edgesync: WebAssembly functions and the SQL schema they need, at the edge."""


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the command line; every failure ends in one ``error: MESSAGE (CODE)`` line.

    The one place errors are rendered (edgesync.reporting): commands raise, never print
    their own failures, so all of them read alike and none ends in a traceback.
    """
    args = argv if argv is not None else sys.argv[1:]
    try:
        result: Any = cli.main(args=args, prog_name="edgesync", standalone_mode=False)
    except SystemExit:
        raise  # a command chose its exit code (agent --once, invoke)
    except (Exception, KeyboardInterrupt) as exc:
        from edgesync.reporting import EXIT_FAILURE, debugging, failure_of

        if debugging():
            raise
        failure = failure_of(exc)
        if failure.code == "OUTPUT_CLOSED":
            _silence_stdout()
        try:
            click.echo(failure.line, err=True)
        except OSError:
            pass  # stderr is gone too: the exit code still tells
        sys.exit(failure.exit_code or EXIT_FAILURE)
    sys.exit(result if isinstance(result, int) else 0)


def _silence_stdout() -> None:
    """stdout's reader went away (``| head``): drop what is still buffered for it."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
