"""The wire types of docs/protocol.md, shared by the control plane and the agent.

Both sides build and parse plans, actions and acks through these frozen
dataclasses, so a field renamed here is renamed everywhere. Parsing validates:
a malformed body raises :class:`~edgesync.errors.ValidationFailed` naming the
offending field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from edgesync.errors import InvalidName, InvalidVersion, ValidationFailed

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,49}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Schema versions are 32-bit integer columns on PostgreSQL/CockroachDB: bounded at
# parse, so that an overflowing number is a 400 naming its field, not a store error.
SCHEMA_VERSION_MAX = 2**31 - 1

ARTIFACT_BUCKET = "wasm-functions"

# The error code of a failed ack by which a node gives up on a plan after its
# tries: the control plane then stops offering that plan until the target changes.
PLAN_REJECTED = "PLAN_REJECTED"

# Liveness on the poll (docs/protocol.md): the facts a heartbeat carries, sent as
# headers of GET …/sync, so a converged node makes one request per interval.
AGENT_VERSION_HEADER = "X-Edgesync-Agent-Version"
STATE_ETAG_HEADER = "X-Edgesync-State-Etag"
# Answered by a control plane that recorded the poll's liveness; an agent that
# never sees it (an older control plane) heartbeats every interval as before.
LIVENESS_RECORDED_HEADER = "X-Edgesync-Liveness"
LIVENESS_RECORDED = "recorded"


def artifact_key(name: str, version: str) -> str:
    """The seed's object key layout inside the ``wasm-functions`` bucket."""
    return f"{name}/{version}/function.wasm"


def validate_name(name: Any) -> str:
    # fullmatch: ``$`` alone would also accept a trailing newline.
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            "function name must match ^[a-z0-9][a-z0-9_-]{0,62}$",
            details={"name": name if isinstance(name, str) else None},
        )
    return name


def validate_version(version: Any) -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise InvalidVersion(
            "version must match ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,49}$",
            details={"version": version if isinstance(version, str) else None},
        )
    return version


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: fixed width, so it also sorts as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- field helpers used by every from_dict -------------------------------------------


def _require(body: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(body, dict):
        raise ValidationFailed(f"{where} must be a JSON object", details={"field": where})
    value = body.get(key)
    # bool is an int subclass; a JSON true is never a valid version number.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ValidationFailed(
            f"{where}.{key} is missing or has the wrong type",
            details={"field": f"{where}.{key}"},
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


# -- state ----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class FunctionRef:
    """One deployed function version, identified by its content hash."""

    name: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, body: Any, where: str = "function") -> FunctionRef:
        name = validate_name(_require(body, "name", str, where))
        version = validate_version(_require(body, "version", str, where))
        sha256 = _require(body, "sha256", str, where)
        if not SHA256_RE.fullmatch(sha256):
            raise ValidationFailed(
                f"{where}.sha256 must be 64 lowercase hex digits",
                details={"field": f"{where}.sha256"},
            )
        return cls(name, version, sha256)


@dataclass(frozen=True)
class NodeState:
    """What a node runs: its schema version and its active functions."""

    schema_version: int = 0
    functions: tuple[FunctionRef, ...] = ()

    def __post_init__(self) -> None:
        # Canonical order so that equal states compare and hash equal.
        object.__setattr__(self, "functions", tuple(sorted(self.functions)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "functions": [f.to_dict() for f in self.functions],
        }

    def digest(self) -> str:
        """A short stable hash of the state, part of every plan ETag."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    @classmethod
    def from_dict(cls, body: Any, where: str = "state") -> NodeState:
        version = _require(body, "schema_version", int, where)
        if not 0 <= version <= SCHEMA_VERSION_MAX:
            raise ValidationFailed(
                f"{where}.schema_version must be from 0 to {SCHEMA_VERSION_MAX}",
                details={"field": f"{where}.schema_version"},
            )
        items = _require(body, "functions", list, where)
        functions = tuple(
            FunctionRef.from_dict(item, f"{where}.functions[{i}]") for i, item in enumerate(items)
        )
        names = [f.name for f in functions]
        if len(names) != len(set(names)):
            raise ValidationFailed(
                f"{where}.functions names one function twice",
                details={"field": f"{where}.functions"},
            )
        return cls(version, functions)


# -- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplySchema:
    version: int
    description: str
    up_sql: str
    type: Literal["apply_schema"] = "apply_schema"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "version": self.version,
            "description": self.description,
            "up_sql": self.up_sql,
        }


@dataclass(frozen=True)
class RevertSchema:
    """Go back across migration ``version``: run its ``down_sql`` and forget it.

    In a plan, revert actions come in descending version before any
    ``apply_schema``, and run in the same transaction as the rest of the plan.
    """

    version: int
    down_sql: str
    type: Literal["revert_schema"] = "revert_schema"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "version": self.version, "down_sql": self.down_sql}


@dataclass(frozen=True)
class DeployFunction:
    function_id: str
    name: str
    version: str
    sha256: str
    size_bytes: int
    download_url: str
    url_expires_at: str
    type: Literal["deploy_function"] = "deploy_function"

    def ref(self) -> FunctionRef:
        return FunctionRef(self.name, self.version, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "function_id": self.function_id,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "download_url": self.download_url,
            "url_expires_at": self.url_expires_at,
        }


@dataclass(frozen=True)
class RemoveFunction:
    name: str
    version: str
    type: Literal["remove_function"] = "remove_function"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "version": self.version}


Action = ApplySchema | RevertSchema | DeployFunction | RemoveFunction


def action_from_dict(body: Any, where: str) -> Action:
    kind = _require(body, "type", str, where)
    if kind == "apply_schema":
        return ApplySchema(
            _schema_version(_require(body, "version", int, where), f"{where}.version"),
            str(body.get("description") or ""),
            _require(body, "up_sql", str, where),
        )
    if kind == "revert_schema":
        return RevertSchema(
            _schema_version(_require(body, "version", int, where), f"{where}.version"),
            _require(body, "down_sql", str, where),
        )
    if kind == "deploy_function":
        return DeployFunction(
            _require(body, "function_id", str, where),
            validate_name(_require(body, "name", str, where)),
            validate_version(_require(body, "version", str, where)),
            _require(body, "sha256", str, where),
            _require(body, "size_bytes", int, where),
            _require(body, "download_url", str, where),
            _require(body, "url_expires_at", str, where),
        )
    if kind == "remove_function":
        return RemoveFunction(
            validate_name(_require(body, "name", str, where)),
            validate_version(_require(body, "version", str, where)),
        )
    raise ValidationFailed(f"{where}.type {kind!r} is unknown", details={"field": f"{where}.type"})


def _schema_version(version: int, where: str) -> int:
    if not 1 <= version <= SCHEMA_VERSION_MAX:
        raise ValidationFailed(
            f"{where} must be from 1 to {SCHEMA_VERSION_MAX}", details={"field": where}
        )
    return version


def check_schema_order(actions: tuple[Action, ...]) -> None:
    """The order rule of schema actions: ``revert_schema`` in descending version,
    all before the first ``apply_schema``. Raises :class:`ValidationFailed`."""
    last_revert: int | None = None
    applying = False
    for index, action in enumerate(actions):
        if isinstance(action, ApplySchema):
            applying = True
        elif isinstance(action, RevertSchema):
            if applying or (last_revert is not None and action.version >= last_revert):
                raise ValidationFailed(
                    "revert_schema actions must come in descending version,"
                    " before any apply_schema",
                    details={"field": f"plan.actions[{index}]"},
                )
            last_revert = action.version


# -- plan and ack ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The difference between a node's state and its target, in execution order."""

    sync_id: str | None
    etag: str
    target: NodeState
    actions: tuple[Action, ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        return not self.actions

    def to_dict(self) -> dict[str, Any]:
        return {
            "sync_id": self.sync_id,
            "etag": self.etag,
            "target": self.target.to_dict(),
            "actions": [a.to_dict() for a in self.actions],
        }

    @classmethod
    def from_dict(cls, body: Any) -> Plan:
        sync_id = body.get("sync_id") if isinstance(body, dict) else None
        items = _require(body, "actions", list, "plan")
        actions = tuple(action_from_dict(a, f"plan.actions[{i}]") for i, a in enumerate(items))
        check_schema_order(actions)
        return cls(
            sync_id=sync_id if isinstance(sync_id, str) else None,
            etag=_require(body, "etag", str, "plan"),
            target=NodeState.from_dict(_require(body, "target", dict, "plan"), "plan.target"),
            actions=actions,
        )


@dataclass(frozen=True)
class ErrorInfo:
    """An error object of the envelope's shape, as carried inside a failed ack."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    retryable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "retryable": self.retryable,
        }

    @classmethod
    def from_dict(cls, body: Any, where: str = "error") -> ErrorInfo:
        details = body.get("details") if isinstance(body, dict) else None
        return cls(
            code=_require(body, "code", str, where),
            message=_require(body, "message", str, where),
            details=details if isinstance(details, dict) else {},
            retryable=bool(body.get("retryable", False)),
        )


AckStatus = Literal["success", "failed"]


@dataclass(frozen=True)
class Ack:
    sync_id: str
    status: AckStatus
    state: NodeState
    error: ErrorInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sync_id": self.sync_id,
            "status": self.status,
            "state": self.state.to_dict(),
            "error": self.error.to_dict() if self.error else None,
        }

    @classmethod
    def from_dict(cls, body: Any) -> Ack:
        sync_id = _require(body, "sync_id", str, "ack")
        status = _require(body, "status", str, "ack")
        if status not in ("success", "failed"):
            raise ValidationFailed(
                "ack.status must be 'success' or 'failed'", details={"field": "ack.status"}
            )
        state = NodeState.from_dict(_require(body, "state", dict, "ack"), "ack.state")
        error = None
        if status == "failed":
            error = ErrorInfo.from_dict(_require(body, "error", dict, "ack"), "ack.error")
        return cls(sync_id, status, state, error)  # type: ignore[arg-type]
