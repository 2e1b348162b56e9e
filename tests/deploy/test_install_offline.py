"""packaging/install-offline.sh: an air-gapped install, run for real into a prefix.

The installer runs without network (in a new network namespace, `unshare -n`, where
this machine allows it) with the real dist/edgesync.pyz, into a temporary --prefix
or DESTDIR: no user is created and nothing outside the temporary directory changes.
The installed wrapper then runs `edgesync`, and the installed systemd units go
through `systemd-analyze verify` where it exists (and a parse of their own always).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgesync import __version__

from .support import PACKAGING, cli_env_vars, parse, parse_unit, unread_env_vars

SCRIPT = PACKAGING / "install-offline.sh"
UNITS = {"edgesync-serve.service": "serve", "edgesync-agent.service": "agent"}
DATA_DIRS = {"serve": "/var/lib/edgesync", "agent": "/var/lib/edgesync-agent"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "Restart": "on-failure",
}
TIMEOUT = 120.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "EDGESYNC_", "SHIV_", "DESTDIR", "VIRTUAL_ENV"))
    }
    env["LANG"] = env.get("LANG") or "C.UTF-8"
    env.update(extra)
    return env


def base_python() -> str:
    """The interpreter the venv was made from: what a machine without our venv has."""
    return getattr(sys, "_base_executable", None) or sys.executable


def offline() -> list[str]:
    """`unshare -n`: a network namespace with no interface up, so nothing is reachable."""
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["unshare", "-n"]
    warnings.warn("unshare -n is not allowed here: the installer runs with network", stacklevel=2)
    return []


def run_installer(
    *args: str | Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*offline(), "bash", str(SCRIPT), *(str(a) for a in args)],
        env=env or clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if check and result.returncode != 0:
        pytest.fail(f"install-offline.sh {args} failed ({result.returncode}):\n{result.stderr}")
    return result


def run(command: Sequence[str | Path], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        env=clean_env(HOME=str(home)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=value lines (with ``commented``, also the ``#KEY=value`` examples)."""
    pattern = r"^\s*(#)?\s*([A-Z][A-Z0-9_]*)=(.*)$"
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(pattern, line)
        if match and (commented or not match[1]):
            found[match[2]] = match[3]
    return found


@dataclass(frozen=True)
class Install:
    prefix: Path
    first_run: subprocess.CompletedProcess[str]
    units_after_first_run: list[str]
    second_run: subprocess.CompletedProcess[str]

    def __truediv__(self, path: str) -> Path:
        return self.prefix / path.lstrip("/")

    @property
    def wrapper(self) -> Path:
        return self / "/usr/local/bin/edgesync"


@pytest.fixture(scope="module")
def installed(zipapp: Path, tmp_path_factory: pytest.TempPathFactory) -> Install:
    """--no-systemd first; then again with the units, after an operator edited serve.env."""
    prefix = tmp_path_factory.mktemp("prefix") / "root"
    python = ["--python", base_python()]
    first = run_installer("--prefix", prefix, "--no-systemd", *python, zipapp)
    units_dir = prefix / "etc/systemd/system"
    units = sorted(p.name for p in units_dir.iterdir()) if units_dir.exists() else []
    with (prefix / "etc/edgesync/serve.env").open("a") as handle:
        handle.write("# edited by the operator\n")
    second = run_installer("--prefix", prefix, *python, zipapp)
    return Install(prefix, first, units, second)


# -- the script itself -----------------------------------------------------------------------


def test_script_syntax_and_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=TIMEOUT)
    if shutil.which("shellcheck") is None:
        warnings.warn("shellcheck is not installed: only `bash -n` checked", stacklevel=1)
        return
    result = subprocess.run(
        ["shellcheck", "--shell=bash", str(SCRIPT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_script_uses_no_network_tool() -> None:
    code = "\n".join(
        line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    forbidden = r"\b(curl|wget|pip3? install|-m pip|apt-get|apt install|dnf|yum|git clone|docker)\b"
    assert not re.findall(forbidden, code)


def test_help() -> None:
    result = run_installer("--help")
    for option in ("--prefix", "DESTDIR", "--no-systemd", "--python"):
        assert option in result.stdout


def test_refuses_an_old_python(tmp_path: Path, zipapp: Path) -> None:
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.12" && exit 0\nexit 1\n')
    fake.chmod(0o755)
    result = run_installer("--prefix", tmp_path / "root", "--python", fake, zipapp, check=False)
    assert result.returncode != 0
    assert "needs 3.11 or newer" in result.stderr
    assert not (tmp_path / "root").exists()


def test_refuses_a_missing_zipapp(tmp_path: Path) -> None:
    result = run_installer("--prefix", tmp_path / "root", tmp_path / "nope.pyz", check=False)
    assert result.returncode != 0
    assert "cannot read the zipapp" in result.stderr


def test_refuses_a_relative_prefix(zipapp: Path) -> None:
    result = run_installer("--prefix", "relative/dir", zipapp, check=False)
    assert result.returncode != 0
    assert "absolute" in result.stderr


# -- what it installs -----------------------------------------------------------------------


def test_layout_and_modes(installed: Install, zipapp: Path) -> None:
    pyz = installed / "/opt/edgesync/edgesync.pyz"
    assert pyz.read_bytes() == zipapp.read_bytes()
    assert mode(pyz) == 0o644
    assert mode(installed.wrapper) == 0o755
    assert mode(installed / "/etc/edgesync/serve.env") == 0o640
    assert mode(installed / "/etc/edgesync/agent.env") == 0o600
    for data_dir in DATA_DIRS.values():
        assert mode(installed / data_dir) == 0o700
    wrapper = installed.wrapper.read_text()
    assert f'"{installed / "/opt/edgesync/edgesync.pyz"}" "$@"' in wrapper
    assert wrapper.splitlines()[-1].startswith("exec ")


def test_zipapp_is_unpacked_and_compiled_at_install(installed: Install) -> None:
    (build,) = (installed / "/opt/edgesync/shiv").glob("edgesync.pyz_*")
    site_packages = build / "site-packages"
    assert (site_packages / "edgesync" / "cli.py").exists()
    assert list((site_packages / "edgesync" / "__pycache__").glob("cli.*.pyc"))


def test_wrapper_runs_from_the_unpacked_tree(installed: Install, tmp_path: Path) -> None:
    shiv_root = installed / "/opt/edgesync/shiv"
    before = sorted(p.name for p in shiv_root.iterdir())
    version = run([installed.wrapper, "--version"], tmp_path)
    assert version.stdout.strip() == f"edgesync, version {__version__}"
    overview = run([installed.wrapper, "--help"], tmp_path).stdout
    assert "serve" in overview and "agent" in overview
    assert "--data-dir" in run([installed.wrapper, "serve", "--help"], tmp_path).stdout
    assert "--enrollment-token" in run([installed.wrapper, "agent", "--help"], tmp_path).stdout
    # No second extraction, neither into SHIV_ROOT nor into ~/.shiv.
    assert sorted(p.name for p in shiv_root.iterdir()) == before
    assert not (tmp_path / ".shiv").exists()


def test_no_systemd_installs_no_units(installed: Install) -> None:
    assert installed.units_after_first_run == []
    assert "installed" not in "".join(
        line for line in installed.first_run.stdout.splitlines() if ".service" in line
    )


def test_env_files_are_kept_on_reinstall(installed: Install) -> None:
    serve_env = installed / "/etc/edgesync/serve.env"
    assert serve_env.read_text().endswith("# edited by the operator\n")
    assert f"kept {serve_env}" in installed.second_run.stdout


@pytest.mark.parametrize("name", ["serve", "agent"])
def test_env_files_hold_only_variables_the_cli_reads(installed: Install, name: str) -> None:
    path = installed / f"/etc/edgesync/{name}.env"
    every = env_file(path, commented=True)
    unknown = set(every) - cli_env_vars(name)
    assert not unknown, f"{path.name}: not read by `edgesync {name}`: {unknown}"
    active = {k: v for k, v in env_file(path).items() if v}
    args = ["--data-dir", DATA_DIRS[name]]
    assert unread_env_vars(name, active, args) == set()


def test_agent_env_names_server_and_enrollment_token(installed: Install) -> None:
    agent = env_file(installed / "/etc/edgesync/agent.env")
    assert {"EDGESYNC_SERVER", "EDGESYNC_ENROLLMENT_TOKEN"} <= set(agent)
    assert {"EDGESYNC_SERVER", "EDGESYNC_ENROLLMENT_TOKEN"} <= cli_env_vars("agent")


# -- the systemd units ------------------------------------------------------------------------


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_source(unit: str) -> None:
    """The shipped unit: hardened, restarts on failure, runs a command the CLI accepts."""
    command = UNITS[unit]
    sections = parse_unit((PACKAGING / "systemd" / unit).read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in sections["Service"].items()}
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert service["User"] == "edgesync"
    assert service["EnvironmentFile"] == f"/etc/edgesync/{command}.env"
    assert service["ReadWritePaths"] == DATA_DIRS[command]
    assert service["Environment"] == "SHIV_ROOT=/opt/edgesync/shiv"
    assert "MemoryDenyWriteExecute" not in service  # the WASM runtimes compile code
    program, subcommand, *args = service["ExecStart"].split()
    assert (program, subcommand) == ("/usr/local/bin/edgesync", command)
    assert str(parse(command, args).params["data_dir"]) == DATA_DIRS[command]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_installed_unit_points_into_the_prefix(installed: Install, unit: str) -> None:
    command = UNITS[unit]
    sections = parse_unit((installed / f"/etc/systemd/system/{unit}").read_text())
    service = {key: values[-1] for key, values in sections["Service"].items()}
    program, *_ = service["ExecStart"].split()
    assert Path(program) == installed.wrapper
    assert Path(service["EnvironmentFile"]) == installed / f"/etc/edgesync/{command}.env"
    for key in ("ReadWritePaths", "WorkingDirectory"):
        assert Path(service[key]) == installed / DATA_DIRS[command]
        assert Path(service[key]).is_dir()
    assert service["Environment"] == f"SHIV_ROOT={installed / '/opt/edgesync/shiv'}"


def test_installed_units_pass_systemd_analyze_verify(installed: Install) -> None:
    units = [installed / f"/etc/systemd/system/{unit}" for unit in sorted(UNITS)]
    for unit in units:
        parse_unit(unit.read_text())  # always: well-formed sections and Key=value lines
    if shutil.which("systemd-analyze") is None:
        warnings.warn("systemd-analyze is not installed: units checked by parsing", stacklevel=1)
        return
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if any(unit in line for unit in UNITS)
    ]
    assert result.returncode == 0 and not ours, "\n".join(ours) or result.stderr


# -- running what was installed -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_starts_from_the_installed_tree(installed: Install, tmp_path: Path) -> None:
    """The installed wrapper and serve.env as the unit uses them, on a loopback port."""
    env = clean_env(HOME=str(tmp_path), **env_file(installed / "/etc/edgesync/serve.env"))
    env["EDGESYNC_ADMIN_TOKEN"] = "deploy-test-admin-token-0123456789"
    port = free_port()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            installed.wrapper,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve did not come up:\n{process.communicate()[0]}")
                time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert not (tmp_path / ".shiv").exists()


def test_destdir_stages_files_that_name_the_final_paths(zipapp: Path, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    run_installer("--python", base_python(), zipapp, env=clean_env(DESTDIR=str(stage)))
    wrapper = (stage / "usr/local/bin/edgesync").read_text()
    assert '"/opt/edgesync/edgesync.pyz" "$@"' in wrapper
    assert "${SHIV_ROOT:-/opt/edgesync/shiv}" in wrapper
    assert list((stage / "opt/edgesync/shiv").glob("edgesync.pyz_*/site-packages"))
    for unit in UNITS:
        installed = (stage / "etc/systemd/system" / unit).read_text()
        assert installed == (PACKAGING / "systemd" / unit).read_text()
    assert (stage / "etc/edgesync/agent.env").exists()
