"""Sync records: plans handed to nodes, and the acks that move a node's state."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from appliance.store.base import StoreBase
from appliance.store.db import Connection
from appliance.store.records import SyncRecord
from appliance.store.transaction import Transaction
from edgesync.errors import NotFound
from edgesync.protocol import PLAN_REJECTED, Ack, format_time

# What an ack did: moved the record and the node's state, or nothing.
APPLIED = "applied"
REPEATED = "repeated"  # the very ack recorded before: idempotent, nothing new
IGNORED = "ignored"  # an ack for a finished or superseded record: never applied
# Stored error fields are cut to these lengths (a node chooses their contents).
ERROR_CODE_LIMIT = 64
ERROR_MESSAGE_LIMIT = 2000


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class AckOutcome:
    record: SyncRecord
    outcome: str  # APPLIED, REPEATED or IGNORED

    @property
    def recorded(self) -> bool:
        """Whether the ack is (now or already) the record's result."""
        return self.outcome != IGNORED


class SyncStore(StoreBase):
    """The SQL of the sync aggregate (``sync_records``, a node's recorded state)."""

    async def open_sync(self, record: SyncRecord) -> str:
        """Record a plan handed to a node and return its sync id.

        The node's open record is handed out again when it is for this very plan
        (same ETag and kind): asking again, from any replica, opens nothing new.
        Any other open record is superseded: only the newest plan may be acked.
        """

        async def open_record(tx: Connection) -> str:
            current = await tx.fetchone(
                "SELECT id FROM sync_records WHERE node_id = ? AND status = 'pending'"
                " AND plan_etag = ? AND sync_type = ?",
                (record.node_id, record.plan_etag, record.sync_type),
            )
            if current is not None:
                return str(current["id"])
            await tx.execute(
                "UPDATE sync_records SET status = 'failed', completed_at = ?,"
                " error_code = 'SUPERSEDED', error_message = 'superseded by a newer plan'"
                " WHERE node_id = ? AND status = 'pending'",
                (record.started_at, record.node_id),
            )
            await tx.execute(
                "INSERT INTO sync_records (id, node_id, sync_type, status, plan_etag, started_at,"
                " functions_added, functions_removed, schemas_applied)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.node_id,
                    record.sync_type,
                    record.plan_etag,
                    record.started_at,
                    record.functions_added,
                    record.functions_removed,
                    record.schemas_applied,
                ),
            )
            await tx.execute(
                "UPDATE nodes SET sync_status = 'pending' WHERE id = ?", (record.node_id,)
            )
            return record.id

        return await self._write(open_record)

    async def record_ack(self, node_id: str, ack: Ack, now: datetime) -> AckOutcome:
        """Apply an ack to its sync record, once.

        A record moves once, from ``pending``, and only a pending record (the
        node's newest plan: opening a plan supersedes the older ones) moves the
        node's recorded state. The same ack again is a ``REPEATED`` no-op (acks
        are idempotent); any other ack for a finished or superseded record is
        ``IGNORED``: counted on the record, never applied. Every applied ack
        moves the node's state revision on, so the next plan (and its ETag) is
        fresh.
        """
        digest = hashlib.sha256(json.dumps(ack.to_dict(), sort_keys=True).encode()).hexdigest()

        async def apply(tx: Transaction) -> AckOutcome:
            row = await tx.fetchone("SELECT * FROM sync_records WHERE id = ?", (ack.sync_id,))
            if row is None or row["node_id"] != node_id:
                raise NotFound("sync not found", details={"sync_id": ack.sync_id})
            record = SyncRecord.from_row(row)
            if record.ack_digest == digest:
                return AckOutcome(record, REPEATED)
            moment = format_time(now)
            if record.status != "pending" or not await self._finish(tx, ack, digest, moment):
                await tx.execute(
                    "UPDATE sync_records SET ignored_acks = ignored_acks + 1 WHERE id = ?",
                    (ack.sync_id,),
                )
                return AckOutcome(await self._sync_in(tx, ack.sync_id), IGNORED)
            await self._save_node_state(tx, node_id, ack, moment)
            tx.touch(node_id)  # its state revision moved: cached stamp and plan are old
            return AckOutcome(await self._sync_in(tx, ack.sync_id), APPLIED)

        return await self._write(apply)

    async def _finish(self, tx: Connection, ack: Ack, digest: str, moment: str) -> bool:
        """Move the pending record to the ack's outcome; False if it is not pending."""
        success = ack.status == "success"
        changed = await tx.execute(
            "UPDATE sync_records SET status = ?, completed_at = ?, error_code = ?,"
            " error_message = ?, ack_digest = ?,"
            " functions_added = CASE WHEN ? THEN functions_added ELSE 0 END,"
            " functions_removed = CASE WHEN ? THEN functions_removed ELSE 0 END,"
            " schemas_applied = CASE WHEN ? THEN schemas_applied ELSE 0 END"
            " WHERE id = ? AND status = 'pending'",
            (
                ack.status,
                moment,
                clip(ack.error.code, ERROR_CODE_LIMIT) if ack.error else None,
                clip(ack.error.message, ERROR_MESSAGE_LIMIT) if ack.error else None,
                digest,
                success,
                success,
                success,
                ack.sync_id,
            ),
        )
        return changed == 1

    async def _sync_in(self, tx: Connection, sync_id: str) -> SyncRecord:
        row = await tx.fetchone("SELECT * FROM sync_records WHERE id = ?", (sync_id,))
        assert row is not None
        return SyncRecord.from_row(row)

    async def _save_node_state(self, tx: Connection, node_id: str, ack: Ack, moment: str) -> None:
        pending = await tx.fetchone(
            "SELECT COUNT(*) AS n FROM sync_records WHERE node_id = ? AND status = 'pending'",
            (node_id,),
        )
        still_syncing = bool(pending and int(pending["n"]))
        # A rejection changes nothing the plan depends on: keep the revision, so the
        # node's next poll with the same ETag is a 304 instead of the same plan again.
        rejected = ack.error is not None and ack.error.code == PLAN_REJECTED
        await tx.execute(
            "UPDATE nodes SET current_schema_version = ?,"
            " state_seq = state_seq + CASE WHEN ? THEN 0 ELSE 1 END,"
            " sync_status = ?, last_sync_at = CASE WHEN ? THEN ? ELSE last_sync_at END"
            " WHERE id = ?",
            (
                ack.state.schema_version,
                rejected,
                "pending" if still_syncing else "idle",
                ack.status == "success",
                moment,
                node_id,
            ),
        )
        await tx.execute("DELETE FROM node_function_deployments WHERE node_id = ?", (node_id,))
        for ref in ack.state.functions:
            await tx.execute(
                "INSERT INTO node_function_deployments"
                " (node_id, name, version, sha256, deployed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (node_id, ref.name, ref.version, ref.sha256, moment),
            )

    async def get_sync(self, sync_id: str) -> SyncRecord | None:
        row = await self.db.fetchone("SELECT * FROM sync_records WHERE id = ?", (sync_id,))
        return SyncRecord.from_row(row) if row else None

    async def sync_history(self, node_id: str, limit: int) -> list[SyncRecord]:
        rows = await self.db.fetchall(
            "SELECT * FROM sync_records WHERE node_id = ?"
            " ORDER BY started_at DESC, id DESC LIMIT ?",
            (node_id, limit),
        )
        return [SyncRecord.from_row(row) for row in rows]
