"""A PostgreSQL server the test owns: ``initdb`` into a temporary directory,
``pg_ctl start``/``stop`` on a free loopback port, removed at the end.

Unlike the shared server of the other suites (``tests/postgres_support.py``),
this one may be stopped and started again, as an operator's failover or a
crash would: the degraded-dependency tests need a real outage, not a relay.

PostgreSQL refuses to run as root. As root, the server runs as an unprivileged
user: ``$EDGESYNC_TEST_PG_USER``, else ``edgesync-test`` (created as a system
user when missing), else ``nobody``. Its directory is made with ``mkdtemp`` in
the system temp dir (pytest's own temp dirs are closed to other users).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
# The API suite's helpers; the tests import them from here, after the line above.
from api_support import ADMIN, ADMIN_TOKEN, Api, Node, expect_error  # noqa: F401

T = TypeVar("T")

BINDIR_ENV = "EDGESYNC_TEST_PG_BINDIR"
USER_ENV = "EDGESYNC_TEST_PG_USER"
DEDICATED_USER = "edgesync-test"
COMMAND_TIMEOUT = 60.0
# Bounds on waiting, never claims about speed.
READY_TIMEOUT = 30.0
REQUEST_DEADLINE = 30.0


class PostgresUnavailable(RuntimeError):
    """No private PostgreSQL can be provided here (the reason says why)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[str] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(os.environ[BINDIR_ENV])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            found = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(found.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian/Ubuntu keep the server binaries out of PATH; newest version first.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found "
        f"(looked in {', '.join(candidates) or 'nothing'}; set ${BINDIR_ENV})"
    )


@dataclass(frozen=True)
class RunAs:
    """Who runs the server: None when the test process itself may."""

    name: str
    uid: int
    gid: int


def server_user() -> RunAs | None:
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get(USER_ENV)
    names = [wanted] if wanted else [DEDICATED_USER, "nobody"]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            if name != DEDICATED_USER or not _create_user(name):
                continue
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
        if entry.pw_uid != 0:
            return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise PostgresUnavailable(
        f"running as root and no unprivileged user for PostgreSQL ({', '.join(names)})"
    )


def _create_user(name: str) -> bool:
    useradd = shutil.which("useradd")
    if useradd is None:
        return False
    try:
        subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            timeout=30,
            check=False,  # another session may have created it meanwhile
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class PrivatePostgres:
    """One PostgreSQL cluster in a temporary directory, on 127.0.0.1 only.

    ``stop()`` and ``start()`` keep the port, so URLs handed out stay valid
    across an outage. Connections use trust authentication as ``postgres``.
    """

    def __init__(self, bindir: Path, base: Path, run_as: RunAs | None) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.run_as = run_as
        self.port = 0

    @classmethod
    def create(cls) -> PrivatePostgres:
        """initdb and start; raises :class:`PostgresUnavailable` with the reason."""
        bindir = find_bindir()
        run_as = server_user()
        base = Path(tempfile.mkdtemp(prefix="edgesync-pg-"))
        server = cls(bindir, base, run_as)
        try:
            if run_as is not None:
                os.chown(base, run_as.uid, run_as.gid)
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            server._start_on_a_free_port()
        except BaseException:
            server.destroy()
            raise
        return server

    # -- control --------------------------------------------------------------------

    def start(self) -> None:
        """Start on the remembered port (waits until it accepts connections)."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
            # Durability against OS crashes is not under test; a killed server
            # still recovers from its WAL (the kernel keeps what was written).
            " -c fsync=off -c max_connections=100"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(READY_TIMEOUT)),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: ``fast`` (clean) or ``immediate`` (a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        result = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return result.returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def destroy(self) -> None:
        if self.data.exists():
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False
                )
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ------------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, **params: str) -> str:
        query = urlencode(params)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def create_database(self) -> str:
        name = f"edgesync_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # -- internals ------------------------------------------------------------------

    def _start_on_a_free_port(self, attempts: int = 5) -> None:
        for attempt in range(attempts):
            self.port = free_port()
            try:
                self.start()
                return
            except PostgresUnavailable:
                # Another process took the port between the probe and the bind.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        try:
            result = subprocess.run(
                [str(self.bindir / tool), *args],
                cwd=self.base,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
                **kwargs,  # type: ignore[arg-type]
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(f"{tool} could not run: {exc}") from exc
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} {' '.join(args[-1:])} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-1500:]}\n{self.log_tail()}"
            )
        return result


# -- one test's database and the apps on it ----------------------------------------------

# The app's pool: small, and quick to give up (an outage costs a request ~2 s)
# and to try again (the pool reconnects within about a second of recovery).
APP_POOL = {
    "pool_min": "1",
    "pool_max": "4",
    "pool_timeout": "2",
    "pool_reconnect_timeout": "1",
}


@dataclass
class PgDatabase:
    """This test's database on the private server, and ways to look at it."""

    server: PrivatePostgres
    name: str

    def url(self, **params: str) -> str:
        """The app's URL (small pool, quick timeouts; ``params`` override)."""
        return self.server.url(self.name, **{**APP_POOL, **params})

    @property
    def plain_url(self) -> str:
        return self.server.url(self.name)

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A connection of the test's own, behind the app's back (autocommit)."""
        return await psycopg.AsyncConnection.connect(
            self.plain_url, autocommit=True, row_factory=dict_row, connect_timeout=10
        )

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        async with await self.connect() as connection:
            cursor = await connection.execute(sql, params)  # type: ignore[arg-type]
            return list(await cursor.fetchall())

    async def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = await self.rows(sql, params)
        assert len(rows) == 1, rows
        return next(iter(rows[0].values()))


# ``make_replica(**ServeConfig overrides)``: an in-process app on the test's database.
AppFactory = Callable[..., Awaitable[Api]]


# -- HTTP checks -------------------------------------------------------------------------


async def within(awaitable: Awaitable[T], deadline: float = REQUEST_DEADLINE) -> T:
    """``awaitable``, or a failure after ``deadline`` seconds: no request may hang."""
    return await asyncio.wait_for(awaitable, deadline)  # type: ignore[arg-type]


async def expect_unavailable(response: Any) -> dict[str, Any]:
    """503 ``SERVICE_UNAVAILABLE``, retryable, with a ``Retry-After`` in seconds."""
    error = await expect_error(response, 503, "SERVICE_UNAVAILABLE")
    assert error["retryable"] is True, error
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) > 0, dict(response.headers)
    return error


async def readiness(api: Api) -> tuple[int, dict[str, Any]]:
    """``/readyz``: its status and its checks (from either the body or the error details)."""
    response = await within(api.get("/readyz"))
    body = await response.json()
    if response.status == 200:
        return 200, body["checks"]
    assert response.status == 503, body
    await expect_unavailable(response)
    return 503, body["error"]["details"]["checks"]


async def wait_ready(api: Api) -> dict[str, Any]:
    """Poll ``/readyz`` until it says 200 (the app is never restarted meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while True:
        status, checks = await readiness(api)
        if status == 200:
            return checks
        if loop.time() > deadline:
            raise AssertionError(f"not ready {READY_TIMEOUT:g} s after the recovery: {checks}")
        await asyncio.sleep(0.2)


# Past any staleness bound of the poll path's FleetCache (about a second).
PAST_THE_CACHE = 3600.0


def past_the_cache(*apis: Api) -> None:
    """Move these apps' FleetCache clocks past their staleness bound, never by sleeping.

    For up to that bound after the database went away, a replica may answer a
    poll with the plan it already holds (its sync record was written before the
    outage); what a node gets after the bound is what the outage tests check.
    """
    for api in apis:
        cache = api.services.cache
        earlier = cache._clock  # the injected monotonic clock
        cache._clock = lambda earlier=earlier: earlier() + PAST_THE_CACHE  # type: ignore[misc]
