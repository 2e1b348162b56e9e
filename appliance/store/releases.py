"""Releases: immutable, numbered snapshots of one schema version and a set of functions.

Every node's target is a release. A node's *effective* release is, in order:
its pin, its explicit assignment (``nodes.release_id``, set by rollouts and
materialised when auto-release is switched off), then the fleet's: the latest
release in auto-release mode, ``default_release_id`` otherwise. Every write that
changes any node's effective release bumps the fleet generation in its own
transaction, so no replica's cache can keep an old target.

Auto-release rides on the generation bump itself: every transaction that adds a
schema, publishes or deletes a function bumps the generation with its reason,
and :meth:`ReleaseStore._bump_generation` then snapshots the fleet into the next
release in that same transaction, so an agent never sees half of a change.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.store.base import StoreBase, decode_cursor, encode_cursor, now
from appliance.store.db import Connection, IntegrityViolation, Row
from appliance.store.records import FunctionRecord, MigrationRecord, Target
from edgesync.errors import (
    FunctionNotFound,
    IncompatibleRelease,
    InvalidRelease,
    NotFound,
    ServiceUnavailable,
)
from edgesync.protocol import format_time

if TYPE_CHECKING:  # annotations only
    from appliance.store.transaction import Transaction

# The generation bumps that change the fleet's v1 target: each makes an auto-release.
AUTO_RELEASE_REASONS = frozenset({"function_uploaded", "function_deleted", "schema_added"})
# Nodes of these rollout states are "in an active rollout".
ACTIVE_ROLLOUT_STATES = ("running", "paused")
_IN_ACTIVE_ROLLOUT = (
    "SELECT rn.node_id FROM rollout_nodes rn JOIN rollouts r ON r.id = rn.rollout_id"
    " WHERE r.state IN ('running', 'paused')"
)


@dataclass(frozen=True)
class ReleaseRecord:
    id: str
    number: int
    schema_version: int
    functions: tuple[dict[str, str], ...]  # name, version, sha256, function_id
    notes: str | None
    origin: str  # "manual" or the auto-release reason
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> ReleaseRecord:
        return cls(
            id=row["id"],
            number=int(row["number"]),
            schema_version=int(row["schema_version"]),
            functions=tuple(json.loads(row["functions"])),
            notes=row["notes"],
            origin=row["origin"],
            created_at=row["created_at"],
        )

    def content(self) -> tuple[int, tuple[tuple[str, str, str], ...]]:
        return self.schema_version, tuple(
            sorted((f["name"], f["version"], f["sha256"]) for f in self.functions)
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "number": self.number,
            "schema_version": self.schema_version,
            "functions": [
                {"name": f["name"], "version": f["version"], "sha256": f["sha256"]}
                for f in sorted(self.functions, key=lambda f: f["name"])
            ],
            "notes": self.notes,
            "auto": self.origin != "manual",
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class FleetSettings:
    auto_release: bool
    default_release_id: str | None

    def to_api(self) -> dict[str, Any]:
        return {"auto_release": self.auto_release, "default_release_id": self.default_release_id}


def resolve_release(
    pinned: str | None, assigned: str | None, fleet: FleetSettings, latest: str | None
) -> str | None:
    """A node's effective release: pin > assignment > the fleet's (see module doc)."""
    if pinned:
        return pinned
    if assigned:
        return assigned
    return latest if fleet.auto_release else fleet.default_release_id


def stamp_release_id(row: Row) -> str | None:
    """The effective release from a node-stamp row: release_id, pinned_release_id,
    auto_release, default_release_id and latest_release_id (one lookup, no extra query)."""
    fleet = FleetSettings(bool(int(row["auto_release"])), row["default_release_id"])
    return resolve_release(
        row["pinned_release_id"], row["release_id"], fleet, row["latest_release_id"]
    )


class ReleaseStore(StoreBase):
    """The SQL of releases, fleet settings and pins."""

    async def _bump_generation(
        self, tx: Transaction, reason: str, node_ids: list[str] | None = None
    ) -> None:
        await super()._bump_generation(tx, reason, node_ids)
        if reason in AUTO_RELEASE_REASONS and (await _fleet(tx)).auto_release:
            await self._auto_release(tx, reason)

    async def _auto_release(
        self, tx: Transaction, reason: str, *, force: bool = False
    ) -> ReleaseRecord | None:
        """Snapshot the fleet's v1 target into the next release, unless it is the latest
        (or, without ``force``, the first one would be empty)."""
        row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        schema_version = int(row["v"]) if row and row["v"] is not None else 0
        newest = await _newest_functions(tx)
        latest = await _latest(tx)
        functions = tuple(_entry(f) for f in newest)
        candidate = (schema_version, tuple(sorted((f.name, f.version, f.sha256) for f in newest)))
        if latest is not None and latest.content() == candidate:
            return None
        if latest is None and candidate == (0, ()) and not force:
            return None
        release = await self._insert_release(tx, schema_version, functions, None, reason)
        await _follow_latest(tx)
        return release

    async def _insert_release(
        self,
        tx: Connection,
        schema_version: int,
        functions: tuple[dict[str, str], ...],
        notes: str | None,
        origin: str,
    ) -> ReleaseRecord:
        latest = await _latest(tx)
        record = ReleaseRecord(
            id=str(uuid.uuid4()),
            number=(latest.number + 1) if latest else 1,
            schema_version=schema_version,
            functions=functions,
            notes=notes,
            origin=origin,
            created_at=format_time(now()),
        )
        await tx.execute(
            "INSERT INTO releases (id, number, schema_version, functions, notes, origin,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.number,
                record.schema_version,
                json.dumps(list(record.functions), sort_keys=True),
                record.notes,
                record.origin,
                record.created_at,
            ),
        )
        return record

    async def create_release(
        self, schema_version: int, functions: list[tuple[str, str]], notes: str | None
    ) -> ReleaseRecord:
        """An operator's release; in auto-release mode the fleet follows it at once."""
        names = [name for name, _ in functions]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidRelease(
                "a release holds one version per function name", details={"names": dup}
            )

        async def create(tx: Transaction) -> ReleaseRecord:
            if schema_version != 0:
                row = await tx.fetchone(
                    "SELECT version FROM schema_migrations WHERE version = ?", (schema_version,)
                )
                if row is None:
                    raise InvalidRelease(
                        f"schema version {schema_version} is not a registered migration",
                        details={"schema_version": schema_version},
                    )
            entries = []
            for name, version in functions:
                found = await tx.fetchone(
                    "SELECT * FROM functions WHERE name = ? AND version = ?"
                    " AND status = 'ready' AND deleted_at IS NULL",
                    (name, version),
                )
                if found is None:
                    raise FunctionNotFound(
                        f"function {name}@{version} not found",
                        details={"name": name, "version": version},
                    )
                requires = int(found["requires_schema"] or 0)
                if requires > schema_version:
                    raise IncompatibleRelease(
                        f"{name}@{version} requires schema {requires};"
                        f" the release has {schema_version}",
                        details={
                            "name": name,
                            "version": version,
                            "requires_schema": requires,
                            "schema_version": schema_version,
                        },
                    )
                entries.append(_entry(FunctionRecord.from_row(found)))
            release = await self._insert_release(
                tx, schema_version, tuple(entries), notes, "manual"
            )
            if (await _fleet(tx)).auto_release:
                await _follow_latest(tx)
                await super(ReleaseStore, self)._bump_generation(tx, "release_created")
            return release

        return await self._write_release(create)

    async def _write_release(self, body: Any) -> ReleaseRecord:
        # Two replicas numbering a release at once: one wins the unique index.
        for _ in range(5):
            try:
                result: ReleaseRecord = await self._write(body)
                return result
            except IntegrityViolation:
                continue
        raise ServiceUnavailable("releases are being created concurrently", retry_after=1)

    # -- reads ----------------------------------------------------------------------

    async def get_release(self, release_id: str) -> ReleaseRecord:
        row = await self.db.fetchone("SELECT * FROM releases WHERE id = ?", (release_id,))
        if row is None:
            raise NotFound("release not found", details={"release_id": release_id})
        return ReleaseRecord.from_row(row)

    async def previous_release(self, release: ReleaseRecord) -> ReleaseRecord | None:
        row = await self.db.fetchone(
            "SELECT * FROM releases WHERE number < ? ORDER BY number DESC LIMIT 1",
            (release.number,),
        )
        return ReleaseRecord.from_row(row) if row else None

    async def latest_release(self) -> ReleaseRecord | None:
        return await _latest(self.db)

    async def list_releases(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ReleaseRecord], str | None]:
        """Newest first, keyset-paginated by number."""
        params: list[Any] = []
        where = ""
        if cursor:
            (number,) = decode_cursor(cursor, 1)
            where = " WHERE number < ?"
            params.append(int(number) if number.isdigit() else 0)
        rows = await self.db.fetchall(
            f"SELECT * FROM releases{where} ORDER BY number DESC LIMIT ?", [*params, limit + 1]
        )
        page = [ReleaseRecord.from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(str(page[-1].number)) if more else None

    async def release_target(self, release_id: str) -> Target:
        """A release's target: its migrations, functions, and the migrations above it
        (``reverts``: what a node ahead of it must undo, with their down_sql)."""
        generation = await self.generation()
        release = await self.get_release(release_id)
        rows = await self.db.fetchall("SELECT * FROM schema_migrations ORDER BY version")
        migrations = [MigrationRecord.from_row(r) for r in rows]
        functions = []
        for entry in release.functions:
            # A deleted version (its object is gone) leaves every release's target,
            # as it leaves the fleet's: nodes holding it are told to remove it.
            row = await self.db.fetchone(
                "SELECT * FROM functions WHERE id = ? AND deleted_at IS NULL",
                (entry["function_id"],),
            )
            if row is not None:
                functions.append(FunctionRecord.from_row(row))
        return Target(
            generation,
            [m for m in migrations if m.version <= release.schema_version],
            functions,
            reverts=[m for m in migrations if m.version > release.schema_version],
        )

    async def fleet_settings(self) -> FleetSettings:
        return await _fleet(self.db)

    async def effective_release_ids(self, node_ids: list[str]) -> dict[str, str | None]:
        """Each node's effective release (module doc), in one read."""
        if not node_ids:
            return {}
        fleet = await _fleet(self.db)
        latest = await _latest(self.db)
        marks = ", ".join("?" for _ in node_ids)
        rows = await self.db.fetchall(
            f"SELECT id, release_id, pinned_release_id FROM nodes WHERE id IN ({marks})",
            node_ids,
        )
        latest_id = latest.id if latest else None
        return {
            r["id"]: resolve_release(r["pinned_release_id"], r["release_id"], fleet, latest_id)
            for r in rows
        }

    async def count_nodes_by_release(self) -> dict[int, int]:
        """How many nodes have each release (by number) as their target."""
        fleet = await _fleet(self.db)
        latest = await _latest(self.db)
        rows = await self.db.fetchall(
            "SELECT pinned_release_id, release_id, COUNT(*) AS n FROM nodes"
            " GROUP BY pinned_release_id, release_id"
        )
        numbers = {
            r["id"]: int(r["number"])
            for r in await self.db.fetchall("SELECT id, number FROM releases")
        }
        counts: dict[int, int] = {}
        for row in rows:
            latest_id = latest.id if latest else None
            release_id = resolve_release(
                row["pinned_release_id"], row["release_id"], fleet, latest_id
            )
            if release_id in numbers:
                number = numbers[release_id]
                counts[number] = counts.get(number, 0) + int(row["n"])
        return counts

    async def count_rollouts_by_state(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT state, COUNT(*) AS n FROM rollouts GROUP BY state")
        counts = dict.fromkeys(("running", "paused", "completed", "aborted", "rolled_back"), 0)
        counts.update({r["state"]: int(r["n"]) for r in rows})
        return counts


def _entry(function: FunctionRecord) -> dict[str, str]:
    return {
        "name": function.name,
        "version": function.version,
        "sha256": function.sha256,
        "function_id": function.id,
    }


async def _newest_functions(tx: Connection) -> list[FunctionRecord]:
    rows = await tx.fetchall(
        "SELECT * FROM functions WHERE deleted_at IS NULL AND status = 'ready'"
        " ORDER BY name, created_at DESC, id DESC"
    )
    newest: dict[str, FunctionRecord] = {}
    for row in rows:
        newest.setdefault(row["name"], FunctionRecord.from_row(row))
    return list(newest.values())


async def _latest(db: Connection) -> ReleaseRecord | None:
    row = await db.fetchone("SELECT * FROM releases ORDER BY number DESC LIMIT 1")
    return ReleaseRecord.from_row(row) if row else None


async def _fleet(db: Connection) -> FleetSettings:
    row = await db.fetchone("SELECT auto_release, default_release_id FROM fleet_state WHERE id = 1")
    if row is None:
        return FleetSettings(True, None)
    return FleetSettings(bool(int(row["auto_release"])), row["default_release_id"])


async def _follow_latest(tx: Connection) -> None:
    """Auto-release: every unpinned node outside an active rollout follows the latest."""
    await tx.execute(
        "UPDATE nodes SET release_id = NULL WHERE release_id IS NOT NULL"
        f" AND pinned_release_id IS NULL AND id NOT IN ({_IN_ACTIVE_ROLLOUT})"
    )
