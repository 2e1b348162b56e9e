#!/usr/bin/env python3
"""Build the single-file ``edgesync`` executable with shiv, as ``shiv.toml`` says.

    python build/zipapp.py                       # dist/edgesync.pyz for this machine
    python build/zipapp.py --if-stale            # only if a source is newer than it
    python build/zipapp.py --platform aarch64    # dist/edgesync-aarch64.pyz (manylinux)

Everything happens in a temporary directory; nothing is taken from the caller's
virtualenv except pip and shiv themselves:

1. stage the project's sources (a copy: setuptools' own ``build/`` and egg-info
   never land in the work tree) and build the project's wheel;
2. ``pip download --only-binary=:all:`` the dependency closure into a wheelhouse,
   for this interpreter or, with ``--platform``, for a manylinux target;
3. shiv ``pip install --target``\\ s exactly that wheelhouse (``--no-index``) into its
   own temporary site-packages and zips it behind the entry point;
4. check the entry point against the console script the wheel declares and, when
   the zipapp can run here, smoke-test it under a bare interpreter (a venv made
   ``--without-pip``, ``python -I``): ``--version``, ``--help`` and the heavy imports.

Run with the project's venv python (it has shiv: ``.venv/bin/python build/zipapp.py``).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import platform as host_platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = ROOT / "shiv.toml"
# Legacy manylinux aliases and the glibc each stands for.
LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


class BuildError(Exception):
    """A build step failed; the message says which and why."""


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class ZipappConfig:
    entry_point: str
    console_script: str
    output: str
    interpreter: str
    compressed: bool
    compile_pyc: bool
    reproducible: bool
    extras: tuple[str, ...]
    requirements: tuple[str, ...]
    constraints: str
    sources: tuple[str, ...]
    smoke_imports: tuple[str, ...]
    python_version: str
    implementation: str
    max_glibc: tuple[int, int]
    platform_output: str
    substitute: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = CONFIG_FILE) -> ZipappConfig:
        data = tomllib.loads(path.read_text())
        app, plat = data.get("zipapp", {}), data.get("platform", {})
        major, minor = (int(part) for part in str(plat.get("max_glibc", "2_28")).split("_"))
        return cls(
            entry_point=app["entry_point"],
            console_script=app.get("console_script", ""),
            output=app.get("output", "dist/edgesync.pyz"),
            interpreter=app.get("interpreter", "/usr/bin/env python3"),
            compressed=bool(app.get("compressed", True)),
            compile_pyc=bool(app.get("compile_pyc", False)),
            reproducible=bool(app.get("reproducible", True)),
            extras=tuple(app.get("extras", ())),
            requirements=tuple(app.get("requirements", ())),
            constraints=app.get("constraints", ""),
            sources=tuple(app["sources"]),
            smoke_imports=tuple(app.get("smoke_imports", ())),
            python_version=str(plat.get("python_version", "3.11")),
            implementation=plat.get("implementation", "cp"),
            max_glibc=(major, minor),
            platform_output=plat.get("output", "dist/edgesync-{arch}.pyz"),
            substitute={k: dict(v) for k, v in plat.get("substitute", {}).items()},
        )

    def inputs(self, root: Path = ROOT) -> list[Path]:
        """Every file whose change makes the zipapp stale."""
        files = [root / "shiv.toml", root / "build" / "zipapp.py"]
        for name in self.sources:
            path = root / name
            if path.is_dir():
                files += [p for p in path.rglob("*") if p.is_file() and _is_source(p)]
            elif path.exists():
                files.append(path)
        return files


def _is_source(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")


@dataclass(frozen=True)
class Target:
    """What the zipapp's native wheels are for: this interpreter, or a manylinux tag set."""

    arch: str | None  # None: the machine and interpreter running this build
    platforms: tuple[str, ...] = ()
    python_version: str = ""
    implementation: str = "cp"

    @property
    def abi(self) -> str:
        return f"{self.implementation}{self.python_version.replace('.', '')}"

    def pip_args(self) -> list[str]:
        """pip options that select wheels for this target (none for the host)."""
        if self.arch is None:
            return []
        args: list[str] = []
        for tag in self.platforms:
            args += ["--platform", tag]
        # pip adds the abi3 and none ABIs to the one named here by itself.
        return [
            *args,
            *("--python-version", self.python_version),
            *("--implementation", self.implementation),
            *("--abi", self.abi),
        ]

    def runs_here(self) -> bool:
        """Whether this machine's python can run the result (for the smoke test)."""
        if self.arch is None:
            return True
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        machine = ARCH_ALIASES.get(host_platform.machine().lower(), host_platform.machine())
        return self.arch == machine and self.python_version == here and sys.platform == "linux"


def manylinux_tags(arch: str, glibc: tuple[int, int]) -> tuple[str, ...]:
    """``manylinux_2_N_arch`` from ``glibc`` down to 2_5, then the legacy aliases."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"{alias}_{arch}" for alias, need in LEGACY_MANYLINUX.items() if need <= glibc]
    return tuple(tags)


def parse_target(spec: str | None, config: ZipappConfig) -> Target:
    """``None`` (this machine), ``x86_64``/``aarch64``, or a manylinux platform tag."""
    if not spec:
        return Target(arch=None)
    spec = spec.strip().lower()
    glibc = config.max_glibc
    if match := re.fullmatch(r"manylinux_(\d+)_(\d+)_([a-z0-9_]+)", spec):
        glibc, arch = (int(match[1]), int(match[2])), match[3]
    elif match := re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_([a-z0-9_]+)", spec):
        glibc, arch = LEGACY_MANYLINUX[match[1]], match[2]
    elif re.fullmatch(r"[a-z0-9_]+", spec):
        arch = ARCH_ALIASES.get(spec, spec)
    else:
        raise BuildError(f"--platform {spec!r}: expected x86_64, aarch64 or a manylinux tag")
    return Target(
        arch=arch,
        platforms=manylinux_tags(arch, glibc),
        python_version=config.python_version,
        implementation=config.implementation,
    )


def output_path(config: ZipappConfig, target: Target, override: str | None) -> Path:
    if override:
        return Path(override).resolve()
    name = config.output if target.arch is None else config.platform_output
    return ROOT / name.format(arch=target.arch or "native")


def is_stale(output: Path, config: ZipappConfig) -> bool:
    if not output.exists():
        return True
    built = output.stat().st_mtime
    return any(path.stat().st_mtime > built for path in config.inputs())


# -- steps ----------------------------------------------------------------------------


def run(command: Sequence[str | Path], what: str, hint: str = "", **kwargs: object) -> None:
    """Run one build step; on failure show its output and raise :class:`BuildError`."""
    print(f"+ {' '.join(str(c) for c in command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(
        [str(c) for c in command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        # This machine's pip configuration names local indexes that warn per package.
        lines = [line for line in result.stdout.splitlines() if "' is ignored: " not in line]
        tail = "\n".join(lines[-40:])
        hint = f"\nhint: {hint}" if hint else ""
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{tail}{hint}")
    print(f"  {what}: {time.monotonic() - started:.1f} s", flush=True)


def stage_sources(config: ZipappConfig, staging: Path, target: Target) -> Path:
    """Copy what the wheel is built from; apply the target's requirement substitutions."""
    staging.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in config.sources:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, staging / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, staging / name)
        else:
            raise BuildError(f"shiv.toml lists {name!r} as a source, but {source} does not exist")
    substitutions = config.substitute.get(target.arch or "", {})
    if substitutions:
        substitute_requirements(staging / "setup.cfg", substitutions)
    return staging


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else ""


def substitute_requirements(setup_cfg: Path, substitutions: dict[str, str]) -> None:
    """Swap ``install_requires`` entries in the staged setup.cfg (the work tree's is untouched)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(setup_cfg)
    wanted = {_requirement_name(name): new for name, new in substitutions.items()}
    lines = [
        s for line in parser["options"]["install_requires"].splitlines() if (s := line.strip())
    ]
    # An empty replacement drops the requirement (the code has a fallback for it).
    replaced = [wanted.get(_requirement_name(line), line) for line in lines]
    missing = set(wanted) - {_requirement_name(line) for line in lines}
    if missing:
        raise BuildError(f"substitution for {sorted(missing)}: not in install_requires")
    for old, new in zip(lines, replaced, strict=True):
        if old != new:
            print(f"  substituting {old!r} -> {new!r}")
    parser["options"]["install_requires"] = "\n" + "\n".join(r for r in replaced if r)
    with setup_cfg.open("w") as handle:
        parser.write(handle)


def build_wheel(staging: Path, out: Path) -> Path:
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, staging],
        "building the project wheel",
    )
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one project wheel in {out}, found {wheels}")
    return wheels[0]


def _constraint_args(config: ZipappConfig) -> list[str]:
    if not config.constraints:
        return []
    path = ROOT / config.constraints
    if not path.exists():
        raise BuildError(f"shiv.toml names constraints file {path}, which does not exist")
    return ["-c", str(path)]


def download_closure(
    config: ZipappConfig, target: Target, wheel: Path, wheelhouse: Path
) -> list[str]:
    """Fill ``wheelhouse`` with binary wheels of the project and everything it needs."""
    project = str(wheel) + (f"[{','.join(config.extras)}]" if config.extras else "")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            wheelhouse,
            *target.pip_args(),
            *_constraint_args(config),
            project,
            *config.requirements,
        ],
        f"downloading the dependency wheels for {target.arch or 'this machine'}",
        hint=(
            f"a dependency published with no wheel for {target.arch} can be swapped for"
            f" another distribution in shiv.toml [platform.substitute.{target.arch}]"
            if target.arch
            else ""
        ),
    )
    if not (wheelhouse / wheel.name).exists():
        shutil.copy2(wheel, wheelhouse / wheel.name)
    return sorted(p.name for p in wheelhouse.iterdir())


def run_shiv(
    config: ZipappConfig, target: Target, wheel: Path, wheelhouse: Path, out: Path
) -> None:
    """shiv pip-installs the wheelhouse (offline) into its temp site-packages and zips it."""
    name, version = wheel.name.split("-")[:2]
    project = name + (f"[{','.join(config.extras)}]" if config.extras else "") + f"=={version}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process: two sessions building at once never write the same file.
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    shiv = Path(sys.executable).with_name("shiv")
    command: list[str | Path] = [shiv] if shiv.exists() else [sys.executable, "-m", "shiv"]
    command += [
        "--entry-point",
        config.entry_point,
        "--output-file",
        partial,
        "--python",
        config.interpreter,
        "--compressed" if config.compressed else "--uncompressed",
    ]
    if config.reproducible:
        command.append("--reproducible")
    if config.compile_pyc:
        command.append("--compile-pyc")
    # Everything after here is handed to `pip install --target <shiv's temp dir>`.
    command += [
        "--no-index",
        "--find-links",
        wheelhouse,
        "--only-binary=:all:",
        "--no-compile",
        *target.pip_args(),
        *_constraint_args(config),
        project,
        *config.requirements,
    ]
    try:
        run(command, "shiv")
        check_entry_point(partial, config)
        partial.replace(out)  # never leave a half-written zipapp at the real name
    finally:
        partial.unlink(missing_ok=True)


def check_entry_point(pyz: Path, config: ZipappConfig) -> None:
    """The zipapp calls shiv.toml's entry point, which is the wheel's console script."""
    with zipfile.ZipFile(pyz) as archive:
        environment = json.loads(archive.read("environment.json"))
        if environment.get("entry_point") != config.entry_point:
            raise BuildError(f"zipapp entry point is {environment.get('entry_point')!r}")
        if not config.console_script:
            return
        declared: dict[str, str] = {}
        for name in archive.namelist():
            if name.endswith(".dist-info/entry_points.txt"):
                parser = configparser.ConfigParser(interpolation=None)
                parser.read_string(archive.read(name).decode())
                if parser.has_section("console_scripts"):
                    declared.update(parser["console_scripts"])
    found = declared.get(config.console_script, "").strip()
    if found != config.entry_point:
        raise BuildError(
            f"console script {config.console_script!r} is {found or 'not declared'}, "
            f"but shiv.toml's entry point is {config.entry_point!r}: keep them in step"
        )


def _base_python() -> str:
    """The interpreter this venv was made from (``sys.executable`` outside a venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def smoke_test(pyz: Path, config: ZipappConfig) -> None:
    """Run the zipapp under a bare interpreter: no site-packages but its own."""
    with tempfile.TemporaryDirectory(prefix="edgesync-smoke-") as tmp:
        bare = Path(tmp) / "bare"
        run([_base_python(), "-m", "venv", "--without-pip", bare], "creating a bare venv")
        python = bare / "bin" / "python3"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": tmp,
            "SHIV_ROOT": str(Path(tmp) / "shiv-root"),
            "LANG": "C.UTF-8",
        }
        run([python, "-I", pyz, "--version"], "smoke test: --version", env=env)
        run([python, "-I", pyz, "--help"], "smoke test: --help", env=env)
        run([python, "-I", pyz, "serve", "--help"], "smoke test: serve --help", env=env)
        if config.smoke_imports:
            code = "import " + ", ".join(config.smoke_imports)
            run(
                [python, "-I", pyz, "-c", code],
                "smoke test: imports",
                env={**env, "SHIV_INTERPRETER": "1"},
            )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build(config: ZipappConfig, target: Target, output: Path, *, smoke: bool = True) -> Path:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgesync-zipapp-") as tmp:
        work = Path(tmp)
        staging = stage_sources(config, work / "src", target)
        wheel = build_wheel(staging, work / "wheel")
        wheelhouse = work / "wheelhouse"
        wheelhouse.mkdir()
        wheels = download_closure(config, target, wheel, wheelhouse)
        print("  wheelhouse: " + ", ".join(wheels))
        run_shiv(config, target, wheel, wheelhouse, output)
    if smoke and target.runs_here():
        smoke_test(output, config)
    elif smoke:
        print(f"  (no smoke test: {target.arch} zipapps do not run on this machine)")
    size = output.stat().st_size
    print(
        f"built {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output} "
        f"({size / 1e6:.1f} MB, sha256 {sha256_of(output)[:16]}…) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return output


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--platform",
        help="build for another machine: x86_64, aarch64 or a manylinux tag "
        "(e.g. manylinux_2_28_aarch64); default: this machine's interpreter",
    )
    parser.add_argument("--output", "-o", help="where to write the zipapp (default from shiv.toml)")
    parser.add_argument(
        "--if-stale",
        action="store_true",
        help="do nothing if the output is newer than every source",
    )
    parser.add_argument("--no-smoke", action="store_true", help="skip the post-build smoke test")
    parser.add_argument(
        "--config", type=Path, default=CONFIG_FILE, help="build configuration (default: shiv.toml)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        config = ZipappConfig.load(args.config)
        target = parse_target(args.platform, config)
        output = output_path(config, target, args.output)
        if args.if_stale and not is_stale(output, config):
            print(f"{output} is up to date")
            return 0
        build(config, target, output, smoke=not args.no_smoke)
    except BuildError as exc:
        print(f"zipapp build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
