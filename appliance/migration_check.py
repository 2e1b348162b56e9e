"""Checking a schema migration before it is accepted, in a child process.

The whole chain (every accepted migration, then the candidate, then its
``down_sql`` and the candidate again when it has one) is applied to a
scratch in-memory database by :mod:`appliance.migration_sandbox`, a child with
a wall-clock limit (killed when it is reached) and an address-space limit. The
server's event loop only waits on a pipe meanwhile, so an endless recursive CTE
or a huge scratch table costs one child its limits, never the server its
answers, its memory or its database: the child is given no path, inherits no
file descriptor and no secret from the environment, and the migration rules
refuse ATTACH in it (:mod:`edgesync.sqlguard`).

Like :mod:`appliance.wasm_check`, the child is ``sys.executable -m …`` with
``PYTHONPATH`` built from ``sys.path``: that works from the shiv zipapp too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.child_env import python_child_environment
from edgesync.errors import InvalidMigration

log = logging.getLogger(__name__)

_MEMORY_HINTS = ("memoryerror", "out of memory", "memory allocation", "cannot allocate")
# Checks running at once in one server; more wait their turn. Bounds what the
# children can take together: this many times the memory limit.
CONCURRENT_CHECKS = 2
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class CheckLimits:
    timeout_seconds: float = 10.0
    memory_bytes: int = 256 * 1024 * 1024


async def check_chain(
    chain: Sequence[tuple[int, str]],
    limits: CheckLimits,
    *,
    down_sql: str | None = None,
    lint: bool = False,
) -> list[dict[str, Any]]:
    """Raise :class:`InvalidMigration` unless every (version, sql) of ``chain``
    applies in order within the migration rules and ``limits`` — and, with
    ``down_sql`` (the last migration's), down and up again after it.

    With ``lint``, return the destructive statements of the last migration's
    ``up_sql`` (``details.statements`` of DESTRUCTIVE_MIGRATION; empty: none),
    found in the same child, under the same limits."""
    async with _check_slots():
        return await _check_in_child(chain, limits, down_sql, lint)


def _check_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(CONCURRENT_CHECKS)
    return slots


async def _check_in_child(
    chain: Sequence[tuple[int, str]], limits: CheckLimits, down_sql: str | None, lint: bool
) -> list[dict[str, Any]]:
    body = {"chain": [list(item) for item in chain], "down_sql": down_sql, "lint": lint}
    payload = json.dumps(body).encode()
    cpu_seconds = math.ceil(limits.timeout_seconds) + 1  # a backstop: the parent kills first
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance.migration_sandbox",
        str(limits.memory_bytes),
        str(cpu_seconds),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_environment(),
        cwd="/",
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(payload), limits.timeout_seconds)
    except TimeoutError:
        raise _over_time(limits) from None
    finally:
        if child.returncode is None:  # timed out, or the request was cancelled
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
    return _judge(child.returncode, out, err, limits)


def _judge(
    returncode: int | None, out: bytes, err: bytes, limits: CheckLimits
) -> list[dict[str, Any]]:
    verdict = _parse(out) if returncode == 0 else None
    if verdict is not None:
        if verdict.get("ok") is True:
            return list(verdict.get("destructive") or [])
        error = verdict["error"]
        raise InvalidMigration(str(error["message"]), details=dict(error["details"]))
    if returncode == -signal.SIGXCPU:
        raise _over_time(limits)
    text = err.decode(errors="replace")
    if any(hint in text.lower() for hint in _MEMORY_HINTS):
        mib = limits.memory_bytes // (1024 * 1024)
        raise InvalidMigration(
            f"the migration check exceeded its memory limit ({mib} MiB)",
            details={"reason": "memory", "sql_error": "out of memory", "limit_mib": mib},
        )
    log.warning("migration check child exited %s: %s", returncode, _last_line(text))
    if returncode is not None and returncode < 0:  # a signal: the SQL brought the engine down
        raise InvalidMigration(
            "the migration check crashed",
            details={"reason": "crashed", "sql_error": f"checker killed by signal {-returncode}"},
        )
    # The child could not run at all (a broken install): the server's fault, not the SQL's.
    raise RuntimeError(f"migration checker exited with status {returncode}")


def _over_time(limits: CheckLimits) -> InvalidMigration:
    seconds = limits.timeout_seconds
    return InvalidMigration(
        f"the migration check ran longer than {seconds:g} s",
        details={
            "reason": "timeout",
            "sql_error": "interrupted: time limit",
            "limit_seconds": seconds,
        },
    )


def _parse(out: bytes) -> dict[str, Any] | None:
    try:
        verdict = json.loads(out)
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None


def _child_environment() -> dict[str, str]:
    # Address space is what is limited: one malloc arena per thread would
    # reserve 64 MiB of it each.
    return python_child_environment(MALLOC_ARENA_MAX="2")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
