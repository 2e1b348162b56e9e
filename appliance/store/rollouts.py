"""Rollouts in the database: the rollout rows, their nodes, function counters, the lease.

Everything that decides a rollout's progress lives here, so any replica can
take over mid-rollout (all of them restarted included). A node of a rollout
is ``pending`` (its wave has not started), ``given`` (its target is the
release, no ack yet), ``applied`` or ``failed``. Giving nodes the release, and
giving them back their previous one, bump the fleet generation with their ids.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from appliance.rollouts.selection import Candidate
from appliance.rollouts.waves import RolloutSettings
from appliance.store.base import StoreBase
from appliance.store.db import Connection, Row
from appliance.store.releases import ACTIVE_ROLLOUT_STATES, _fleet, _latest, resolve_release
from edgesync.errors import NodeInRollout, NotFound, RolloutStateConflict
from edgesync.protocol import format_time

if TYPE_CHECKING:  # annotations only
    from appliance.store.transaction import Transaction

ROWS_PER_INSERT = 200


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    release_id: str
    state: str
    settings: RolloutSettings
    waves: list[dict[str, Any]]  # index, size (cumulative), state, started_at, observe_until
    current_wave: int
    created_at: str
    updated_at: str
    accepted_failures: int = 0  # failures a resume accepted
    counts: dict[int, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Row) -> RolloutRecord:
        raw = json.loads(row["settings"])
        accepted = int(raw.pop("accepted_failures", 0))
        raw["waves"] = tuple(raw.pop("waves_spec", ("100%",)))
        return cls(
            id=row["id"],
            release_id=row["release_id"],
            state=row["state"],
            settings=RolloutSettings(**raw),
            waves=json.loads(row["waves"]),
            current_wave=int(row["current_wave"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            accepted_failures=accepted,
        )

    def settings_json(self) -> str:
        return json.dumps({**self.settings.to_api(), "accepted_failures": self.accepted_failures})

    @property
    def failures(self) -> int:
        return sum(c.get("failed", 0) for c in self.counts.values())

    def to_api(self) -> dict[str, Any]:
        settings = self.settings.to_api()
        settings.pop("release_id")
        waves = []
        for wave in self.waves:
            counts = self.counts.get(wave["index"], {})
            waves.append(
                {
                    "index": wave["index"],
                    "size": wave["size"],
                    "state": wave["state"],
                    "nodes": {k: counts.get(k, 0) for k in ("pending", "applied", "failed")},
                }
            )
        return {
            "id": self.id,
            "release_id": self.release_id,
            "state": self.state,
            **settings,
            "waves": waves,
            "failures": self.failures,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class RolloutStore(StoreBase):
    """The SQL of ``rollouts``, ``rollout_nodes``, ``function_counters``, ``rollout_lease``."""

    async def rollout_candidates(self) -> list[Candidate]:
        rows = await self.db.fetchall(
            "SELECT id, region, labels, pinned_release_id FROM nodes ORDER BY id"
        )
        return [
            Candidate(
                r["id"], r["region"], json.loads(r["labels"]), r["pinned_release_id"] is not None
            )
            for r in rows
        ]

    async def create_rollout(
        self, settings: RolloutSettings, node_ids: list[str], sizes: list[int], now: datetime
    ) -> RolloutRecord:
        """Store the rollout, freeze its nodes' current targets, give the first wave."""
        moment = format_time(now)
        record = RolloutRecord(
            id=str(uuid.uuid4()),
            release_id=settings.release_id,
            state="running",
            settings=settings,
            waves=[
                {"index": i, "size": size, "state": "pending", "started_at": None}
                for i, size in enumerate(sizes)
            ],
            current_wave=0,
            created_at=moment,
            updated_at=moment,
        )

        async def create(tx: Transaction) -> RolloutRecord:
            busy = await _busy(tx, node_ids)
            if busy:
                raise NodeInRollout(
                    f"{len(busy)} selected node(s) are in an active rollout",
                    details={"node_ids": busy[:100]},
                )
            fleet = await _fleet(tx)
            latest = await _latest(tx)
            latest_id = latest.id if latest else None
            await tx.execute(
                "INSERT INTO rollouts (id, release_id, state, settings, waves, current_wave,"
                " wave_started_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    record.id,
                    record.release_id,
                    record.state,
                    record.settings_json(),
                    json.dumps(record.waves),
                    moment,
                    moment,
                    moment,
                ),
            )
            positions = {node_id: i for i, node_id in enumerate(node_ids)}
            for start in range(0, len(node_ids), ROWS_PER_INSERT):
                chunk = node_ids[start : start + ROWS_PER_INSERT]
                marks = ", ".join("?" for _ in chunk)
                rows = await tx.fetchall(
                    f"SELECT id, release_id, pinned_release_id FROM nodes WHERE id IN ({marks})",
                    chunk,
                )
                values: list[Any] = []
                for row in rows:
                    position = positions[row["id"]]
                    wave = next(i for i, size in enumerate(sizes) if position < size)
                    previous = resolve_release(
                        row["pinned_release_id"],
                        row["release_id"],
                        fleet,
                        latest_id,
                    )
                    values += [record.id, row["id"], wave, position, previous]
                if values:
                    await tx.execute(
                        "INSERT INTO rollout_nodes (rollout_id, node_id, wave_index, position,"
                        " previous_release_id, state) VALUES "
                        + ", ".join("(?, ?, ?, ?, ?, 'pending')" for _ in range(len(values) // 5)),
                        values,
                    )
            # Freeze: nodes following the fleet keep their current release while in the rollout.
            await tx.execute(
                "UPDATE nodes SET release_id = (SELECT rn.previous_release_id FROM rollout_nodes rn"
                " WHERE rn.rollout_id = ? AND rn.node_id = nodes.id)"
                " WHERE release_id IS NULL AND id IN"
                " (SELECT node_id FROM rollout_nodes WHERE rollout_id = ?)",
                (record.id, record.id),
            )
            started = await self.give_wave(tx, record, 0, now)
            return started

        return await self._write(create)

    async def give_wave(
        self, tx: Transaction, rollout: RolloutRecord, index: int, now: datetime
    ) -> RolloutRecord:
        """Wave ``index`` starts: its nodes get the release as their target."""
        moment = format_time(now)
        rows = await tx.fetchall(
            "SELECT node_id FROM rollout_nodes WHERE rollout_id = ? AND wave_index = ?"
            " AND state = 'pending'",
            (rollout.id, index),
        )
        node_ids = [r["node_id"] for r in rows]
        if node_ids:
            await tx.execute(
                "UPDATE nodes SET release_id = ? WHERE id IN (SELECT node_id FROM rollout_nodes"
                " WHERE rollout_id = ? AND wave_index = ? AND state = 'pending')",
                (rollout.release_id, rollout.id, index),
            )
            await tx.execute(
                "UPDATE rollout_nodes SET state = 'given', given_at = ?"
                " WHERE rollout_id = ? AND wave_index = ? AND state = 'pending'",
                (moment, rollout.id, index),
            )
            await self._bump_generation(tx, "rollout_wave", node_ids)
        waves = [dict(w) for w in rollout.waves]
        waves[index].update(state="running", started_at=moment, observe_until=None)
        updated = replace(rollout, waves=waves, current_wave=index, updated_at=moment)
        await self.save_rollout(tx, updated)
        return updated

    async def save_rollout(self, tx: Connection, rollout: RolloutRecord) -> None:
        await tx.execute(
            "UPDATE rollouts SET state = ?, settings = ?, waves = ?, current_wave = ?,"
            " updated_at = ? WHERE id = ?",
            (
                rollout.state,
                rollout.settings_json(),
                json.dumps(rollout.waves),
                rollout.current_wave,
                rollout.updated_at,
                rollout.id,
            ),
        )

    async def give_back(self, tx: Transaction, rollout: RolloutRecord) -> list[str]:
        """Every node given the release gets its previous target back (a rollback)."""
        rows = await tx.fetchall(
            "SELECT node_id FROM rollout_nodes WHERE rollout_id = ? AND state <> 'pending'",
            (rollout.id,),
        )
        node_ids = [r["node_id"] for r in rows]
        if node_ids:
            await tx.execute(
                "UPDATE nodes SET release_id = (SELECT rn.previous_release_id FROM rollout_nodes rn"
                " WHERE rn.rollout_id = ? AND rn.node_id = nodes.id) WHERE id IN"
                " (SELECT node_id FROM rollout_nodes WHERE rollout_id = ? AND state <> 'pending')",
                (rollout.id, rollout.id),
            )
            await self._bump_generation(tx, "rollout_rollback", node_ids)
        return node_ids

    async def load_rollout(self, db: Connection, rollout_id: str) -> RolloutRecord:
        row = await db.fetchone("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        if row is None:
            raise NotFound("rollout not found", details={"rollout_id": rollout_id})
        record = RolloutRecord.from_row(row)
        return replace(record, counts=await _counts(db, rollout_id))

    async def get_rollout(self, rollout_id: str) -> RolloutRecord:
        return await self.load_rollout(self.db, rollout_id)

    async def list_rollouts(
        self, *, state: str | None, limit: int, cursor: str | None
    ) -> tuple[list[RolloutRecord], str | None]:
        clauses, params = ([], []) if state is None else (["state = ?"], [state])
        page, next_cursor = await self._page("rollouts", clauses, params, limit, cursor)
        records = [
            replace(RolloutRecord.from_row(r), counts=await _counts(self.db, r["id"])) for r in page
        ]
        return records, next_cursor

    async def active_rollout_ids(self) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT id FROM rollouts WHERE state = 'running' ORDER BY created_at"
        )
        return [r["id"] for r in rows]

    async def rollout_node_rows(self, db: Connection, rollout_id: str) -> list[Row]:
        return await db.fetchall(
            "SELECT rn.node_id, rn.wave_index, rn.state, rn.given_at, n.current_schema_version"
            " FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id"
            " WHERE rn.rollout_id = ? ORDER BY rn.position",
            (rollout_id,),
        )

    async def wave_node_ids(self, rollout_id: str) -> dict[int, list[str]]:
        rows = await self.db.fetchall(
            "SELECT node_id, wave_index FROM rollout_nodes WHERE rollout_id = ? ORDER BY position",
            (rollout_id,),
        )
        waves: dict[int, list[str]] = {}
        for row in rows:
            waves.setdefault(int(row["wave_index"]), []).append(row["node_id"])
        return waves

    # -- function counters (the health gate's input) ----------------------------------

    async def record_function_counters(
        self, node_id: str, counters: dict[str, tuple[int, int]], now: datetime
    ) -> None:
        """Counts since the node's previous heartbeat: (invocations, errors) per name."""
        rows = [(n, i, e) for n, (i, e) in counters.items() if i or e]
        if not rows:
            return

        async def insert(tx: Transaction) -> None:
            values: list[Any] = []
            for name, invocations, errors in rows:
                values += [node_id, name, invocations, errors, format_time(now)]
            await tx.execute(
                "INSERT INTO function_counters (node_id, name, invocations, errors, reported_at)"
                " VALUES " + ", ".join("(?, ?, ?, ?, ?)" for _ in rows),
                values,
            )
            # Counters older than a day decide nothing any more.
            await tx.execute(
                "DELETE FROM function_counters WHERE node_id = ? AND reported_at < ?",
                (node_id, format_time(now - timedelta(days=1))),
            )

        await self._write(insert)

    # -- the engine lease: one replica evaluates at a time --------------------------

    async def take_rollout_lease(self, owner: str, now: datetime, ttl: float) -> bool:
        async def take(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE rollout_lease SET owner = ?, expires_at = ?"
                " WHERE id = 1 AND (owner IS NULL OR owner = ? OR expires_at < ?)",
                (owner, format_time(now + timedelta(seconds=ttl)), owner, format_time(now)),
            )
            return changed == 1

        return await self._write(take)

    async def drop_rollout_lease(self, owner: str) -> None:
        async def drop(tx: Transaction) -> None:
            await tx.execute(
                "UPDATE rollout_lease SET owner = NULL WHERE id = 1 AND owner = ?", (owner,)
            )

        await self._write(drop)


async def _busy(tx: Connection, node_ids: list[str]) -> list[str]:
    busy: list[str] = []
    states = ", ".join(f"'{s}'" for s in ACTIVE_ROLLOUT_STATES)
    for start in range(0, len(node_ids), ROWS_PER_INSERT):
        chunk = node_ids[start : start + ROWS_PER_INSERT]
        marks = ", ".join("?" for _ in chunk)
        rows = await tx.fetchall(
            "SELECT rn.node_id FROM rollout_nodes rn JOIN rollouts r ON r.id = rn.rollout_id"
            f" WHERE r.state IN ({states}) AND rn.node_id IN ({marks})",
            chunk,
        )
        busy += [r["node_id"] for r in rows]
    return sorted(busy)


async def _counts(db: Connection, rollout_id: str) -> dict[int, dict[str, int]]:
    rows = await db.fetchall(
        "SELECT wave_index, state, COUNT(*) AS n FROM rollout_nodes WHERE rollout_id = ?"
        " GROUP BY wave_index, state",
        (rollout_id,),
    )
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        state = "pending" if row["state"] == "given" else row["state"]
        wave = counts.setdefault(int(row["wave_index"]), {})
        wave[state] = wave.get(state, 0) + int(row["n"])
    return counts


# The operator's transitions: action -> (states it applies to, the state it leads to).
TRANSITIONS = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "abort": (("running", "paused"), "aborted"),
    "rollback": (("running", "paused", "completed", "aborted"), "rolled_back"),
}


class RolloutControl(RolloutStore):
    """pause, resume, abort and rollback, each one transaction."""

    async def change_rollout(self, rollout_id: str, action: str, now: datetime) -> RolloutRecord:
        allowed, target = TRANSITIONS[action]

        async def change(tx: Transaction) -> RolloutRecord:
            rollout = await self.load_rollout(tx, rollout_id)
            if rollout.state not in allowed:
                raise RolloutStateConflict(
                    f"cannot {action} a rollout that is {rollout.state}",
                    details={"state": rollout.state, "action": action},
                )
            if action == "resume":  # the failures so far are accepted by the operator
                rollout = replace(rollout, accepted_failures=rollout.failures)
            if action == "rollback":
                await self.give_back(tx, rollout)
            changed = replace(rollout, state=target, updated_at=format_time(now))
            await self.save_rollout(tx, changed)
            return changed

        await self._write(change)
        return await self.get_rollout(rollout_id)
