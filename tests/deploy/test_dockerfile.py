"""packaging/Dockerfile, read and checked (no Docker engine runs here).

A build stage makes the zipapp from exactly what shiv.toml lists; the runtime stage
runs it as a non-root user with arguments `edgesync serve` accepts.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib

import pytest

from .support import PACKAGING, ROOT, Dockerfile, Stage, parse, parse_dockerfile

DOCKERFILE = PACKAGING / "Dockerfile"
PYZ_IN_IMAGE = "/opt/edgesync/edgesync.pyz"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def build(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stage("build")


@pytest.fixture(scope="module")
def runtime(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stages[-1]


def test_two_stages_on_python_311_slim(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) == 2
    for stage in dockerfile.stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    # Same base: the wheels picked in the build match the runtime's CPython and glibc.
    assert dockerfile.stages[0].base == dockerfile.stages[1].base


def test_build_stage_builds_the_zipapp_from_shiv_toml_sources(build: Stage) -> None:
    assert any(
        "build/zipapp.py" in run.value or "make zipapp" in run.value for run in build.all("RUN")
    )
    copied: set[str] = set()
    for copy in build.all("COPY"):
        _, words = copy.flags_and_args()
        copied.update(word.rstrip("/") for word in words[:-1])
    config = tomllib.loads((ROOT / "shiv.toml").read_text())
    needed = {*config["zipapp"]["sources"], "shiv.toml", "build/zipapp.py"}
    assert needed <= copied, f"missing from the build stage: {needed - copied}"


def test_dockerignore_keeps_the_sources(build: Stage) -> None:
    patterns = [
        line.strip()
        for line in (PACKAGING / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    config = tomllib.loads((ROOT / "shiv.toml").read_text())
    for source in [*config["zipapp"]["sources"], "shiv.toml", "build/zipapp.py"]:
        assert not any(fnmatch.fnmatch(source, p) for p in patterns), source


def test_runtime_copies_the_zipapp_from_the_build(runtime: Stage) -> None:
    copies = [c.flags_and_args() for c in runtime.all("COPY")]
    assert ({"from": "build"}, ["/src/dist/edgesync.pyz", PYZ_IN_IMAGE]) in copies


def test_runtime_runs_as_a_non_root_user(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user is not None
    uid = user.value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can check runAsNonRoot"
    # Every RUN (user creation, unpacking into SHIV_ROOT) runs as root before USER:
    # the unpacked tree belongs to root and the service user can only read it.
    assert all(run.line < user.line for run in runtime.all("RUN"))
    assert any(f"--uid {uid}" in run.value for run in runtime.all("RUN"))


def test_shiv_root_is_filled_at_build_time(runtime: Stage) -> None:
    """The image unpacks (and compiles) the zipapp into SHIV_ROOT: starts are fast and
    nothing is written there at run time (read-only root file system on k3s)."""
    shiv_root = runtime.env().get("SHIV_ROOT")
    assert shiv_root and shiv_root.startswith("/")
    copy_line = next(c.line for c in runtime.all("COPY") if PYZ_IN_IMAGE in c.value)
    unpack = [r for r in runtime.all("RUN") if r.line > copy_line and PYZ_IN_IMAGE in r.value]
    assert unpack, "no RUN unpacks the zipapp into SHIV_ROOT"
    assert any(f"compileall -q -j 0 {shiv_root}" in r.value for r in unpack)


def test_entrypoint_and_command_are_a_valid_serve(runtime: Stage) -> None:
    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert entrypoint.exec_form() == ["python3", PYZ_IN_IMAGE]
    args = cmd.exec_form()
    assert args is not None and args[0] == "serve"
    # click parses the very arguments: every option exists and every value is valid.
    params = parse("serve", args[1:]).params
    assert params["host"] == "0.0.0.0"
    assert params["port"] == 8080
    assert str(params["data_dir"]) == "/var/lib/edgesync"


def test_healthcheck_and_ports(runtime: Stage) -> None:
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    probe = healthcheck.exec_form()
    assert probe is not None
    assert "http://127.0.0.1:8080/healthz" in " ".join(probe)
    exposed = set(" ".join(e.value for e in runtime.all("EXPOSE")).split())
    assert {"8080", "1883"} <= exposed


def test_healthcheck_command_is_valid_python(runtime: Stage) -> None:
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    probe = healthcheck.exec_form()
    assert probe is not None and probe[:2] == ["python3", "-c"]
    compile(probe[2], "<healthcheck>", "exec")


def test_shell_form_runs_are_valid_shell(dockerfile: Dockerfile) -> None:
    """Each shell-form RUN parses as /bin/sh code (dash's `-n` where it exists)."""
    shell = shutil.which("dash") or "/bin/sh"
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if run.exec_form() is not None:
                continue
            result = subprocess.run(
                [shell, "-n", "-c", run.value], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, f"line {run.line}: {result.stderr}"
