"""Function versions: upload claims, publishing, listing, deletion."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from appliance.store.base import StoreBase
from appliance.store.db import Connection, IntegrityViolation, Row
from appliance.store.records import FunctionRecord
from appliance.store.transaction import Transaction
from edgesync.errors import FunctionExists, NotFound
from edgesync.protocol import format_time

# A claim made without an owning instance (by an older version), older than
# this, belongs to a crashed upload.
STALE_UPLOAD = timedelta(minutes=15)


class FunctionStore(StoreBase):
    """The SQL of the function aggregate (``functions``)."""

    # -- functions ------------------------------------------------------------------

    async def reserve_function(
        self,
        record: FunctionRecord,
        now: datetime,
        owner: str | None = None,
        live: Collection[str] = (),
    ) -> None:
        """Claim ``(name, version)`` for an upload in progress (invisible to plans).

        Only the claimant stores the object, so two concurrent uploads of one
        version can never mix their bytes (the loser gets 409). A claim whose
        upload is over without publishing is taken over at once: one of the
        serve instance ``owner`` itself that is not in its ``live`` uploads (a
        failure it could not release, e.g. with the database away), one whose
        owning instance stopped renewing its lease (killed), and one made
        without an owner (older versions) once it is older than ``STALE_UPLOAD``.
        """

        async def reserve(tx: Connection) -> None:
            held = await tx.fetchone(
                "SELECT id, claim_owner, created_at FROM functions"
                " WHERE name = ? AND version = ? AND status = 'uploading'",
                (record.name, record.version),
            )
            if held is not None:
                if not await _claim_is_over(tx, held, owner, live, now):
                    raise FunctionExists(
                        f"function {record.name} {record.version} is being uploaded right now",
                        details={
                            "name": record.name,
                            "version": record.version,
                            "upload_in_progress": True,
                        },
                    )
                await tx.execute(
                    "DELETE FROM functions WHERE id = ? AND status = 'uploading'", (held["id"],)
                )
            await tx.execute(
                "INSERT INTO functions (id, name, version, sha256, size_bytes, storage_key,"
                " created_at, status, claim_owner, requires_schema)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'uploading', ?, ?)",
                (
                    record.id,
                    record.name,
                    record.version,
                    record.sha256,
                    record.size_bytes,
                    record.storage_key,
                    record.created_at,
                    owner,
                    record.requires_schema,
                ),
            )

        try:
            await self._write(reserve)
        except IntegrityViolation as exc:
            raise FunctionExists(
                f"function {record.name} {record.version} already exists; versions are immutable",
                details={"name": record.name, "version": record.version},
            ) from exc

    async def publish_function(self, function_id: str) -> None:
        """The object is stored: make the version part of the target."""

        async def publish(tx: Transaction) -> None:
            changed = await tx.execute(
                "UPDATE functions SET status = 'ready' WHERE id = ? AND status = 'uploading'",
                (function_id,),
            )
            if changed != 1:
                raise NotFound("upload reservation is gone", details={"function_id": function_id})
            await self._bump_generation(tx, "function_uploaded")

        await self._write(publish)

    async def release_function(self, function_id: str) -> None:
        """Give up an upload's claim (it failed before publishing)."""

        async def release(tx: Connection) -> None:
            await tx.execute(
                "DELETE FROM functions WHERE id = ? AND status = 'uploading'", (function_id,)
            )

        await self._write(release)

    async def function_exists(self, name: str, version: str) -> bool:
        """Whether ``(name, version)`` was uploaded (deleted since or not).

        A claim of an upload in progress does not count here: whether it is live
        is decided where it can be taken over, in :meth:`reserve_function`.
        """
        row = await self.db.fetchone(
            "SELECT id FROM functions WHERE name = ? AND version = ? AND status <> 'uploading'",
            (name, version),
        )
        return row is not None

    async def get_function(
        self, function_id: str, *, include_deleted: bool = False
    ) -> FunctionRecord:
        row = await self.db.fetchone(
            "SELECT * FROM functions WHERE id = ? AND status = 'ready'", (function_id,)
        )
        if row is None or (row["deleted_at"] is not None and not include_deleted):
            raise NotFound("function not found", details={"function_id": function_id})
        return FunctionRecord.from_row(row)

    async def list_functions(
        self, *, name: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[FunctionRecord], str | None]:
        clauses = ["deleted_at IS NULL", "status = 'ready'"]
        params: list[Any] = []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        page, next_cursor = await self._page("functions", clauses, params, limit, cursor)
        return [FunctionRecord.from_row(row) for row in page], next_cursor

    async def delete_function(self, function_id: str, now: datetime) -> FunctionRecord:
        """Withdraw a version from the target. The row stays: versions are never reused."""

        async def delete(tx: Transaction) -> FunctionRecord:
            row = await tx.fetchone(
                "SELECT * FROM functions WHERE id = ? AND deleted_at IS NULL AND status = 'ready'",
                (function_id,),
            )
            if row is None:
                raise NotFound("function not found", details={"function_id": function_id})
            await tx.execute(
                "UPDATE functions SET deleted_at = ? WHERE id = ?", (format_time(now), function_id)
            )
            await self._bump_generation(tx, "function_deleted")
            return FunctionRecord.from_row(row)

        return await self._write(delete)


async def _claim_is_over(
    tx: Connection, held: Row, owner: str | None, live: Collection[str], now: datetime
) -> bool:
    """Whether the upload behind the claim ``held`` has ended without publishing."""
    holder = held["claim_owner"]
    if holder is None:
        return str(held["created_at"]) < format_time(now - STALE_UPLOAD)
    if holder == owner:
        return held["id"] not in live
    instance = await tx.fetchone("SELECT alive_until FROM serve_instances WHERE id = ?", (holder,))
    return instance is None or str(instance["alive_until"]) < format_time(now)
