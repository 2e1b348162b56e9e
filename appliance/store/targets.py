"""Schema migrations and the target state they make with the functions."""

from __future__ import annotations

from appliance.store.base import StoreBase
from appliance.store.db import IntegrityViolation
from appliance.store.records import FunctionRecord, MigrationRecord, Target
from appliance.store.transaction import Transaction
from edgesync.errors import SchemaVersionConflict


class TargetStore(StoreBase):
    """The SQL of the target: ``schema_migrations`` and the newest ready functions."""

    # -- schema migrations ----------------------------------------------------------

    async def list_migrations(self) -> list[MigrationRecord]:
        rows = await self.db.fetchall("SELECT * FROM schema_migrations ORDER BY version")
        return [MigrationRecord.from_row(row) for row in rows]

    async def add_migration(self, record: MigrationRecord) -> None:
        """Append ``record``; its version must be exactly one past the highest."""

        async def append(tx: Transaction) -> None:
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
            highest = int(row["v"]) if row and row["v"] is not None else 0
            if record.version != highest + 1:
                raise SchemaVersionConflict(
                    f"schema version must be {highest + 1}",
                    details={"expected_version": highest + 1, "version": record.version},
                )
            await tx.execute(
                "INSERT INTO schema_migrations"
                " (version, description, up_sql, down_sql, checksum, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.version,
                    record.description,
                    record.up_sql,
                    record.down_sql,
                    record.checksum,
                    record.created_at,
                ),
            )
            await self._bump_generation(tx, "schema_added")

        try:
            await self._write(append)
        except IntegrityViolation as exc:  # a concurrent append won the race
            raise SchemaVersionConflict(
                f"schema version {record.version} already exists",
                details={"version": record.version},
            ) from exc

    # -- target and sync ------------------------------------------------------------

    async def target(self) -> Target:
        """Every migration, and the newest non-deleted version of every function."""
        generation = await self.generation()
        migrations = await self.list_migrations()
        rows = await self.db.fetchall(
            "SELECT * FROM functions WHERE deleted_at IS NULL AND status = 'ready'"
            " ORDER BY name, created_at DESC, id DESC"
        )
        newest: dict[str, FunctionRecord] = {}
        for row in rows:
            newest.setdefault(row["name"], FunctionRecord.from_row(row))
        return Target(generation, migrations, list(newest.values()))
