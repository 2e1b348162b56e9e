"""Helpers of the deployment tests: the CLI's environment variables, YAML, Dockerfiles.

The variables a deployment may hand to ``edgesync serve`` or ``edgesync agent`` are
derived from the click commands themselves (each option's ``envvar``, plus the
``EDGESYNC_<COMMAND>_<OPTION>`` form ``auto_envvar_prefix`` gives every option,
plus the few variables the command module reads with ``os.environ``), and a set of
variables is checked by letting click parse it: a variable counts only if some
option then takes its value from the environment.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import click
import yaml
from click.core import ParameterSource

from edgesync.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
K3S = ROOT / "k3s"
NAMESPACE = "edge-control-plane"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# -- the CLI's environment -------------------------------------------------------------


def _parent_context() -> click.Context:
    return cli.make_context("edgesync", ["--help"], resilient_parsing=True)


def subcommand(name: str) -> click.Command:
    command = cli.get_command(_parent_context(), name)
    assert command is not None, f"edgesync has no {name!r} command"
    return command


def auto_prefix(name: str) -> str:
    """``EDGESYNC_SERVE`` for ``serve``: what click prefixes each option's name with."""
    root = cli.context_settings["auto_envvar_prefix"]
    return f"{root}_{name.upper()}".replace("-", "_")


def direct_env_reads(name: str) -> set[str]:
    """Variables the command's module reads itself (``os.environ.get("X")`` and the like)."""
    source = inspect.getsource(importlib.import_module(COMMANDS[name][0]))
    patterns = (
        r"os\.environ\.get\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
        r"os\.environ\[\s*[\"']([A-Z][A-Z0-9_]*)[\"']\s*\]",
        r"os\.getenv\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
    )
    return {match for pattern in patterns for match in re.findall(pattern, source)}


def option_env_vars(name: str) -> set[str]:
    """Every variable that sets an option of ``edgesync NAME``."""
    names: set[str] = set()
    for param in subcommand(name).params:
        if not isinstance(param, click.Option):
            continue
        if isinstance(param.envvar, str):
            names.add(param.envvar)
        elif param.envvar:
            names.update(param.envvar)
        if param.allow_from_autoenv and param.name:
            names.add(f"{auto_prefix(name)}_{param.name.upper()}")
    return names


def cli_env_vars(name: str) -> set[str]:
    """Every environment variable ``edgesync NAME`` reads."""
    return option_env_vars(name) | direct_env_reads(name)


def parse(name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> click.Context:
    """Let click parse ``edgesync NAME ARGS`` under exactly ``env``; raise on a bad value."""
    with mock.patch.dict(os.environ, dict(env or {}), clear=True):
        parent = cli.make_context("edgesync", [name])
        return subcommand(name).make_context(name, list(args), parent=parent)


def unread_env_vars(name: str, env: Mapping[str, str], args: Sequence[str] = ()) -> set[str]:
    """The variables of ``env`` that ``edgesync NAME`` does not read (should be empty).

    Each variable is parsed on its own, so the value must also be valid for its option.
    """
    direct = direct_env_reads(name)
    unread = set()
    for key, value in env.items():
        if key in direct:
            continue
        ctx = parse(name, args, {key: value})
        taken = [
            p for p in ctx.params if ctx.get_parameter_source(p) is ParameterSource.ENVIRONMENT
        ]
        if not taken:
            unread.add(key)
    return unread


# -- YAML ------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass(frozen=True)
class Manifest:
    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}: {self.kind}/{self.name}"


def k3s_manifests() -> list[Manifest]:
    return [
        Manifest(path, doc) for path in sorted(K3S.rglob("*.y*ml")) for doc in yaml_documents(path)
    ]


# -- docker compose --------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (``$$`` is ``$``)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return ""

    parts = value.split("$$")
    return "$".join(_INTERPOLATION.sub(replace, part) for part in parts)


def required_variables(text: str) -> set[str]:
    """The ``${VAR:?...}`` a compose file refuses to start without."""
    return {m["name"] for m in _INTERPOLATION.finditer(text) if m["op"] in (":?", "?")}


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment:`` (mapping or list form) as a dict of raw strings."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in environment.items()}


# -- Dockerfile ------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (CMD/ENTRYPOINT/RUN), else None."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None

    def flags_and_args(self) -> tuple[dict[str, str], list[str]]:
        """``--flag=value`` options and the remaining words (COPY, FROM, ...)."""
        flags: dict[str, str] = {}
        words = shlex.split(self.value)
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            flags[key] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage (later ones win)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.value):
                key, sep, value = word.partition("=")
                if sep:
                    values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instructions with their continuation lines joined; comments dropped."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        yield start, " ".join(part for part in buffer if part)
        buffer = []
    if buffer:
        yield start, " ".join(buffer)


def parse_dockerfile(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text()):
        keyword, _, value = text.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip(), line)
        if instruction.keyword == "FROM":
            _, words = instruction.flags_and_args()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if instruction.keyword == "ARG":
                key, _, default = instruction.value.partition("=")
                args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args, stages)


# -- systemd units ---------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}}; raise ValueError on a bad line."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()):
            raise ValueError(f"line {number}: not a 'Key=value' line in a section: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections
