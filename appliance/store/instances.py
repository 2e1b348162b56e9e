"""Serve instances: which processes are alive, so that their upload claims are too.

Every ``edgesync serve`` process is an instance with a random id and a lease
(``alive_until``) it renews while it runs. An upload claim names its instance;
the claim lives as long as its upload does in a live instance and no longer.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from appliance.store.base import StoreBase
from appliance.store.db import Connection
from appliance.store.functions import STALE_UPLOAD
from edgesync.protocol import format_time

# Instance rows whose lease ran out this long ago are forgotten.
FORGET_AFTER = timedelta(days=1)


class InstanceStore(StoreBase):
    """The SQL of ``serve_instances`` and of collecting the claims of dead ones."""

    async def announce_instance(
        self, instance_id: str, host: str, data_dir: str, now: datetime, lease: timedelta
    ) -> None:
        """Register the instance, or renew its lease."""

        async def announce(tx: Connection) -> None:
            await tx.execute(
                "INSERT INTO serve_instances (id, host, data_dir, started_at, alive_until)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until",
                (instance_id, host, data_dir, format_time(now), format_time(now + lease)),
            )

        await self._write(announce)

    async def retire_instances(self, instance_ids: Collection[str]) -> int:
        """Forget instances known to be gone, and drop their unpublished claims."""
        if not instance_ids:
            return 0
        marks = ", ".join("?" for _ in instance_ids)
        ids = list(instance_ids)

        async def retire(tx: Connection) -> int:
            released = await tx.execute(
                f"DELETE FROM functions WHERE status = 'uploading' AND claim_owner IN ({marks})",
                ids,
            )
            await tx.execute(f"DELETE FROM serve_instances WHERE id IN ({marks})", ids)
            return released

        return await self._write(retire)

    async def other_instances(self, instance_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT id FROM serve_instances WHERE id <> ?", (instance_id,)
        )
        return [str(row["id"]) for row in rows]

    async def collect_dead_claims(
        self, instance_id: str, live: Collection[str], now: datetime
    ) -> int:
        """Drop every claim whose upload is over; return how many.

        Over: its instance's lease ran out (or the instance is unknown), it is
        this instance's and not among its ``live`` uploads, or it has no owner
        and is older than ``STALE_UPLOAD``.
        """
        moment = format_time(now)

        async def collect(tx: Connection) -> int:
            dropped = await tx.execute(
                "DELETE FROM functions WHERE status = 'uploading' AND ("
                " (claim_owner IS NULL AND created_at < ?)"
                " OR (claim_owner IS NOT NULL AND claim_owner <> ? AND NOT EXISTS ("
                "  SELECT 1 FROM serve_instances s"
                "  WHERE s.id = functions.claim_owner AND s.alive_until >= ?)))",
                (format_time(now - STALE_UPLOAD), instance_id, moment),
            )
            mine = await tx.fetchall(
                "SELECT id FROM functions WHERE status = 'uploading' AND claim_owner = ?",
                (instance_id,),
            )
            for row in mine:
                if row["id"] not in live:
                    dropped += await tx.execute(
                        "DELETE FROM functions WHERE id = ? AND status = 'uploading'",
                        (row["id"],),
                    )
            await tx.execute(
                "DELETE FROM serve_instances WHERE alive_until < ?",
                (format_time(now - FORGET_AFTER),),
            )
            return dropped

        return await self._write(collect)
