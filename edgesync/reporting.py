"""How any failure of any ``edgesync`` command reaches the user: one line, one exit code.

Every command ends, on failure, in exactly ``error: MESSAGE (CODE)`` on stderr and a
non-zero exit: an :class:`EdgesyncError` as it is, click's usage errors, and the
errors no command anticipated (a missing file, a permission, an interrupt) mapped
to a clear message and a stable code. No traceback reaches the user; set
``EDGESYNC_DEBUG=1`` to let one through when developing.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import click

from edgesync.errors import EdgesyncError

DEBUG_ENV = "EDGESYNC_DEBUG"

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_OS_CODES = {
    errno.ENOENT: "FILE_NOT_FOUND",
    errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED",
    errno.EROFS: "READ_ONLY_FILESYSTEM",
    errno.ENOSPC: "DISK_FULL",
    errno.EDQUOT: "DISK_FULL",
    errno.EISDIR: "IS_A_DIRECTORY",
    errno.ENOTDIR: "NOT_A_DIRECTORY",
    errno.EEXIST: "FILE_EXISTS",
    errno.EADDRINUSE: "ADDRESS_IN_USE",
    errno.EADDRNOTAVAIL: "ADDRESS_NOT_AVAILABLE",
    errno.ECONNREFUSED: "UNREACHABLE",
    errno.EPIPE: "OUTPUT_CLOSED",
}


@dataclass(frozen=True)
class Failure:
    message: str
    code: str
    exit_code: int = EXIT_FAILURE

    @property
    def line(self) -> str:
        return f"error: {_one_line(self.message)} ({self.code})"


def failure_of(exc: BaseException) -> Failure:
    """The one line and exit code for ``exc``, whatever it is."""
    if isinstance(exc, EdgesyncError):
        return Failure(exc.message, exc.code)
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "edgesync"
        return Failure(f"{where}: {exc.format_message()}", "USAGE", EXIT_USAGE)
    if isinstance(exc, click.ClickException):
        return Failure(exc.format_message(), "BAD_INPUT", exc.exit_code or EXIT_FAILURE)
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return Failure("interrupted", "INTERRUPTED", EXIT_INTERRUPTED)
    if isinstance(exc, OSError):
        return _os_failure(exc)
    if isinstance(exc, (ValueError, UnicodeError)):
        return Failure(str(exc) or type(exc).__name__, "BAD_INPUT")
    if isinstance(exc, MemoryError):
        return Failure("out of memory", "OUT_OF_MEMORY")
    text = str(exc) or "no message"
    return Failure(f"unexpected {type(exc).__name__}: {text}", "INTERNAL")


def _os_failure(exc: OSError) -> Failure:
    code = _OS_CODES.get(exc.errno or -1, "OS_ERROR")
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[0].lower() + reason[1:]
    if exc.filename is not None:
        target = f"{exc.filename}"
        if exc.filename2 is not None:
            target += f" -> {exc.filename2}"
        return Failure(f"{target}: {reason}", code)
    return Failure(reason, code)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
