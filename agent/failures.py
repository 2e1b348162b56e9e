"""Sorting failures the way the seed does: transient against permanent.

Transient (retry with backoff, forever): the network, timeouts, 5xx and 429
from the control plane. Permanent (at most five tries for the same plan, then
the plan is rejected): a bad signature or hash after a re-download, an invalid
module, a SQL error, a plan that contradicts itself.
"""

from __future__ import annotations

import asyncio

from edgesync.errors import EdgesyncError
from edgesync.neterrors import describe
from edgesync.protocol import PLAN_REJECTED, ErrorInfo

__all__ = ["PLAN_REJECTED", "ArtifactCorrupt", "PermanentError", "TransientError", "classify"]


class TransientError(EdgesyncError):
    code = "TRANSIENT"
    retryable = True


class PermanentError(EdgesyncError):
    code = "PERMANENT"
    retryable = False


class PlanInconsistent(PermanentError):
    code = "PLAN_INCONSISTENT"


class ArtifactCorrupt(PermanentError):
    code = "HASH_MISMATCH"


def classify(exc: BaseException) -> EdgesyncError:
    """Map any exception to an :class:`EdgesyncError` with ``retryable`` set."""
    if isinstance(exc, EdgesyncError):
        if exc.status >= 500 or exc.status == 429 or exc.code in ("UNREACHABLE", "TRANSIENT"):
            exc.retryable = True
        return exc
    import aiohttp

    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return TransientError(f"network failure talking to the control plane: {describe(exc)}")
    if isinstance(exc, OSError):
        return TransientError(f"local I/O failed: {exc}")
    return PermanentError(f"{type(exc).__name__}: {exc}", code="AGENT_ERROR")


def error_info(error: EdgesyncError) -> ErrorInfo:
    return ErrorInfo(error.code, error.message[:2000], dict(error.details), error.retryable)
