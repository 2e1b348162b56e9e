"""Typed rows of the metadata store and their API representations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appliance.store.db import Row
from edgesync.protocol import FunctionRef, NodeState, format_time


@dataclass(frozen=True)
class NodeRecord:
    id: str
    name: str
    region: str | None
    labels: dict[str, str]
    current_schema_version: int
    state_seq: int
    token_jti: str
    token_expires_at: str
    poll_interval_seconds: int
    agent_version: str | None
    sync_status: str
    last_heartbeat_at: str | None
    offline_after: str
    last_sync_at: str | None
    created_at: str
    functions: tuple[FunctionRef, ...] = ()
    # Explicit assignment (a rollout's) and pin; the effective release is resolved
    # by appliance.store.releases.resolve_release.
    release_id: str | None = None
    pinned_release_id: str | None = None

    @classmethod
    def from_row(cls, row: Row, functions: tuple[FunctionRef, ...] = ()) -> NodeRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            region=row["region"],
            labels=json.loads(row["labels"]),
            current_schema_version=int(row["current_schema_version"]),
            state_seq=int(row["state_seq"]),
            token_jti=row["token_jti"],
            token_expires_at=row["token_expires_at"],
            poll_interval_seconds=int(row["poll_interval_seconds"]),
            agent_version=row["agent_version"],
            sync_status=row["sync_status"],
            last_heartbeat_at=row["last_heartbeat_at"],
            offline_after=row["offline_after"],
            last_sync_at=row["last_sync_at"],
            created_at=row["created_at"],
            functions=functions,
            release_id=row.get("release_id"),
            pinned_release_id=row.get("pinned_release_id"),
        )

    def state(self) -> NodeState:
        return NodeState(self.current_schema_version, self.functions)

    def status(self, now: datetime) -> str:
        """offline once the last heartbeat is older than 3 × the poll interval."""
        if self.offline_after < format_time(now):
            return "offline"
        return "syncing" if self.sync_status == "pending" else "online"

    def to_api(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "labels": self.labels,
            "status": self.status(now),
            "current_schema_version": self.current_schema_version,
            "functions": [f.to_dict() for f in self.functions],
            "agent_version": self.agent_version,
            "poll_interval_seconds": self.poll_interval_seconds,
            "last_heartbeat_at": self.last_heartbeat_at,
            "last_sync_at": self.last_sync_at,
            "created_at": self.created_at,
            "release_id": self.pinned_release_id or self.release_id,
            "pinned_release_id": self.pinned_release_id,
        }


@dataclass(frozen=True)
class FunctionRecord:
    id: str
    name: str
    version: str
    sha256: str
    size_bytes: int
    storage_key: str
    created_at: str
    deleted_at: str | None = None
    # The lowest schema version this function works with (checked by releases).
    requires_schema: int = 0

    @classmethod
    def from_row(cls, row: Row) -> FunctionRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            version=row["version"],
            sha256=row["sha256"],
            size_bytes=int(row["size_bytes"]),
            storage_key=row["storage_key"],
            created_at=row["created_at"],
            deleted_at=row["deleted_at"],
            requires_schema=int(row.get("requires_schema") or 0),
        )

    def ref(self) -> FunctionRef:
        return FunctionRef(self.name, self.version, self.sha256)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "requires_schema": self.requires_schema,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class MigrationRecord:
    version: int
    description: str
    up_sql: str
    down_sql: str | None
    checksum: str
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> MigrationRecord:
        return cls(
            version=int(row["version"]),
            description=row["description"],
            up_sql=row["up_sql"],
            down_sql=row["down_sql"],
            checksum=row["checksum"],
            created_at=row["created_at"],
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "description": self.description,
            "up_sql": self.up_sql,
            "down_sql": self.down_sql,
            "checksum": self.checksum,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class SyncRecord:
    id: str
    node_id: str
    sync_type: str
    status: str
    plan_etag: str
    started_at: str
    completed_at: str | None
    error_code: str | None
    error_message: str | None
    functions_added: int
    functions_removed: int
    schemas_applied: int
    ack_digest: str | None = None
    ignored_acks: int = 0  # acks that came after the record was finished or superseded

    @classmethod
    def from_row(cls, row: Row) -> SyncRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node_id": self.node_id,
            "sync_type": self.sync_type,
            "status": self.status,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "functions_added": self.functions_added,
            "functions_removed": self.functions_removed,
            "schemas_applied": self.schemas_applied,
            "ignored_acks": self.ignored_acks,
        }


@dataclass(frozen=True)
class EnrollmentTokenRecord:
    id: str
    secret_hash: str
    region: str | None
    max_uses: int
    uses: int
    expires_at: str
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> EnrollmentTokenRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class NodeStamp:
    """What the per-request path needs to know about a node, from one lookup."""

    node_id: str
    token_jti: str
    state_seq: int
    generation: int
    # The token rotated away last: it may only repeat that rotation (see auth.py).
    previous_token_jti: str | None = None
    poll_interval_seconds: int = 30  # liveness: offline after 3 intervals
    # The release whose target the node follows (pinned > assigned > fleet default);
    # None: no release exists yet, the fleet-wide target.
    release_id: str | None = None


# A node is offline once this many poll intervals passed without a sign of life.
OFFLINE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class LivenessMark:
    """A node seen alive (a poll or heartbeat), waiting for the next batched write."""

    node_id: str
    seen_at: str
    offline_after: str
    agent_version: str | None = None
    state_etag: str | None = None


@dataclass
class Target:
    """The fleet-wide target state at one generation."""

    generation: int
    migrations: list[MigrationRecord] = field(default_factory=list)
    functions: list[FunctionRecord] = field(default_factory=list)
    # Migrations above this target's schema, for a node ahead of it (revert_schema).
    reverts: list[MigrationRecord] = field(default_factory=list)

    @property
    def schema_version(self) -> int:
        return self.migrations[-1].version if self.migrations else 0


@dataclass(frozen=True)
class FleetChange:
    """One bump of the fleet generation: why, and whom it concerns (None: every node)."""

    generation: int
    reason: str
    node_ids: tuple[str, ...] | None
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> FleetChange:
        raw = row.get("node_ids")
        return cls(
            int(row["generation"]),
            str(row["reason"]),
            tuple(json.loads(raw)) if raw else None,
            str(row["created_at"]),
        )
