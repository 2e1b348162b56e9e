"""One error hierarchy for the control plane, the agent and the CLI.

Every failure that crosses the wire is an :class:`EdgesyncError`: it carries the
envelope code from docs/protocol.md, the HTTP status it maps to, and whether retrying
the same request may succeed. One aiohttp middleware renders them
(``appliance.middleware``); the client parses the envelope back into the same
class, so both sides speak one vocabulary.
"""

from __future__ import annotations

from typing import Any


class EdgesyncError(Exception):
    """Base of every edgesync error that has a stable code."""

    code = "INTERNAL"
    status = 500
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.details: dict[str, Any] = details or {}
        self.headers: dict[str, str] = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The error body of docs/protocol.md."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "retryable": self.retryable,
            }
        }

    @classmethod
    def from_envelope(cls, status: int, body: Any) -> EdgesyncError:
        """Rebuild an error from a response body; tolerate non-envelope bodies."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(
                f"HTTP {status} without an error envelope",
                code="BAD_RESPONSE",
                status=status,
                retryable=status >= 500,
            )
        return cls(
            str(error.get("message", "")),
            code=str(error.get("code", "INTERNAL")),
            status=status,
            details=error.get("details") or {},
            retryable=bool(error.get("retryable", False)),
        )

    def __str__(self) -> str:
        # The one form of every CLI error line and log line: ``MESSAGE (CODE)``.
        return f"{self.message} ({self.code})"


class BadRequest(EdgesyncError):
    code = "BAD_REQUEST"
    status = 400


class InvalidJSON(BadRequest):
    code = "INVALID_JSON"


class ValidationFailed(BadRequest):
    code = "VALIDATION_FAILED"


class InvalidName(BadRequest):
    code = "INVALID_NAME"


class InvalidVersion(BadRequest):
    code = "INVALID_VERSION"


class InvalidWasm(BadRequest):
    code = "INVALID_WASM"


class HashMismatch(BadRequest):
    code = "HASH_MISMATCH"


class InvalidMigration(BadRequest):
    code = "INVALID_MIGRATION"


class InvalidRelease(BadRequest):
    code = "INVALID_RELEASE"


class DestructiveMigration(BadRequest):
    """up_sql drops, renames or rewrites what nodes hold; ``allow_destructive`` accepts it."""

    code = "DESTRUCTIVE_MIGRATION"


class MalformedRequest(BadRequest):
    """HTTP framing the server cannot parse: request line, headers, chunking, encoding."""

    code = "MALFORMED_REQUEST"


class InvalidMultipart(BadRequest):
    """A multipart body without a boundary, unterminated, or with broken or repeated parts."""

    code = "INVALID_MULTIPART"


class Unauthorized(EdgesyncError):
    code = "UNAUTHORIZED"
    status = 401


class InvalidEnrollmentToken(Unauthorized):
    code = "INVALID_ENROLLMENT_TOKEN"


class Forbidden(EdgesyncError):
    code = "FORBIDDEN"
    status = 403


class UrlExpiredOrInvalid(Forbidden):
    code = "URL_EXPIRED_OR_INVALID"


class NotFound(EdgesyncError):
    code = "NOT_FOUND"
    status = 404


class FunctionNotFound(NotFound):
    code = "FUNCTION_NOT_FOUND"


class MethodNotAllowed(EdgesyncError):
    code = "METHOD_NOT_ALLOWED"
    status = 405


class Conflict(EdgesyncError):
    code = "CONFLICT"
    status = 409


class FunctionExists(Conflict):
    code = "FUNCTION_EXISTS"


class SchemaVersionConflict(Conflict):
    code = "SCHEMA_VERSION_CONFLICT"


class UnknownSync(Conflict):
    code = "SYNC_CONFLICT"


class IncompatibleRelease(Conflict):
    """A function of the release requires a newer schema than the release has."""

    code = "INCOMPATIBLE_RELEASE"


class NodeInRollout(Conflict):
    """A node of the selection already is in an active rollout."""

    code = "NODE_IN_ROLLOUT"


class IrreversibleRollout(Conflict):
    """Rolling back would cross a migration without down_sql."""

    code = "IRREVERSIBLE_ROLLOUT"


class RolloutStateConflict(Conflict):
    """The rollout's state does not allow that transition."""

    code = "ROLLOUT_STATE_CONFLICT"


class RequestTimeout(EdgesyncError):
    """The client sent its headers or body too slowly (slowloris and the like)."""

    code = "REQUEST_TIMEOUT"
    status = 408


class PayloadTooLarge(EdgesyncError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


class UnsupportedMediaType(EdgesyncError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415


class ExpectationFailed(EdgesyncError):
    code = "EXPECTATION_FAILED"
    status = 417


class HeadersTooLarge(EdgesyncError):
    code = "HEADERS_TOO_LARGE"
    status = 431


class ServiceUnavailable(EdgesyncError):
    code = "SERVICE_UNAVAILABLE"
    status = 503
    retryable = True

    def __init__(self, message: str, *, retry_after: int = 5, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Retry-After", str(retry_after))
        super().__init__(message, headers=headers, **kwargs)


class RateLimited(EdgesyncError):
    """The caller asked too often; ``Retry-After`` says when it may ask again."""

    code = "RATE_LIMITED"
    status = 429
    retryable = True

    def __init__(self, message: str, *, retry_after: int, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Retry-After", str(retry_after))
        super().__init__(message, headers=headers, **kwargs)


class BadConfig(EdgesyncError, ValueError):
    """A setting or a local file the command cannot use (a ValueError for old callers)."""

    code = "BAD_CONFIG"
    status = 400


class InternalError(EdgesyncError):
    code = "INTERNAL"
    status = 500
