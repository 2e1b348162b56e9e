"""Nodes and their tokens: enrollment, registration, liveness, rotation, listing."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from typing import Any

from appliance.store.base import StoreBase, now
from appliance.store.db import Connection
from appliance.store.records import (
    OFFLINE_AFTER_INTERVALS,
    EnrollmentTokenRecord,
    LivenessMark,
    NodeRecord,
    NodeStamp,
)
from appliance.store.releases import stamp_release_id
from appliance.store.transaction import Transaction
from edgesync.errors import InvalidEnrollmentToken, NotFound
from edgesync.protocol import FunctionRef, format_time

# Five parameters a row: far below SQLite's 32,766 and PostgreSQL's 65,535.
LIVENESS_ROWS_PER_STATEMENT = 1000


class NodeStore(StoreBase):
    """The SQL of the node aggregate (``nodes``, ``enrollment_tokens``, deployments)."""

    async def node_stamp(self, node_id: str) -> NodeStamp | None:
        """Token ids, state revision, poll interval and fleet generation: all the poll
        path needs, in one indexed lookup (the FleetCache keeps it in memory)."""
        row = await self.db.fetchone(
            "SELECT n.token_jti, n.previous_token_jti, n.state_seq, n.poll_interval_seconds,"
            " f.generation, n.release_id, n.pinned_release_id, f.auto_release,"
            " f.default_release_id,"
            " (SELECT r.id FROM releases r ORDER BY r.number DESC LIMIT 1) AS latest_release_id"
            " FROM nodes n, fleet_state f WHERE n.id = ? AND f.id = 1",
            (node_id,),
        )
        if row is None:
            return None
        return NodeStamp(
            node_id,
            row["token_jti"],
            int(row["state_seq"]),
            int(row["generation"]),
            row["previous_token_jti"],
            poll_interval_seconds=int(row["poll_interval_seconds"]),
            release_id=stamp_release_id(row),
        )

    # -- enrollment tokens ----------------------------------------------------------

    async def create_enrollment_token(self, record: EnrollmentTokenRecord) -> None:
        async def insert(tx: Connection) -> None:
            await tx.execute(
                "INSERT INTO enrollment_tokens"
                " (id, secret_hash, region, max_uses, uses, expires_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.secret_hash,
                    record.region,
                    record.max_uses,
                    record.uses,
                    record.expires_at,
                    record.created_at,
                ),
            )

        await self._write(insert)

    async def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord | None:
        row = await self.db.fetchone("SELECT * FROM enrollment_tokens WHERE id = ?", (token_id,))
        return EnrollmentTokenRecord.from_row(row) if row else None

    # -- nodes ----------------------------------------------------------------------

    async def register_node(self, node: NodeRecord, token_hash: str, enrollment_id: str) -> None:
        """Insert ``node`` and spend one use of its enrollment token, atomically."""

        async def register(tx: Connection) -> None:
            spent = await tx.execute(
                "UPDATE enrollment_tokens SET uses = uses + 1"
                " WHERE id = ? AND uses < max_uses AND expires_at > ?",
                (enrollment_id, node.created_at),
            )
            if spent != 1:
                raise InvalidEnrollmentToken("enrollment token is expired or used up")
            await tx.execute(
                "INSERT INTO nodes (id, name, region, labels, current_schema_version, state_seq,"
                " token_jti, token_hash, token_expires_at, poll_interval_seconds, sync_status,"
                " last_heartbeat_at, offline_after, created_at)"
                " VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?, ?, 'idle', ?, ?, ?)",
                (
                    node.id,
                    node.name,
                    node.region,
                    json.dumps(node.labels, sort_keys=True),
                    node.token_jti,
                    token_hash,
                    node.token_expires_at,
                    node.poll_interval_seconds,
                    node.last_heartbeat_at,
                    node.offline_after,
                    node.created_at,
                ),
            )
            await self._remember_jti(tx, node.id, node.token_jti, node.created_at)

        await self._write(register)

    async def get_node(self, node_id: str) -> NodeRecord:
        row = await self.db.fetchone("SELECT * FROM nodes WHERE id = ?", (node_id,))
        if row is None:
            raise NotFound("node not found", details={"node_id": node_id})
        deployed = await self._deployments([node_id])
        return NodeRecord.from_row(row, deployed.get(node_id, ()))

    async def _deployments(self, node_ids: list[str]) -> dict[str, tuple[FunctionRef, ...]]:
        if not node_ids:
            return {}
        marks = ", ".join("?" for _ in node_ids)
        rows = await self.db.fetchall(
            "SELECT node_id, name, version, sha256 FROM node_function_deployments"
            f" WHERE node_id IN ({marks}) ORDER BY node_id, name",
            node_ids,
        )
        result: dict[str, list[FunctionRef]] = {}
        for row in rows:
            result.setdefault(row["node_id"], []).append(
                FunctionRef(row["name"], row["version"], row["sha256"])
            )
        return {node_id: tuple(refs) for node_id, refs in result.items()}

    async def list_nodes(
        self,
        *,
        now: datetime,
        status: str | None = None,
        region: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[NodeRecord], str | None]:
        clauses: list[str] = []
        params: list[Any] = []
        moment = format_time(now)
        if status == "offline":
            clauses.append("offline_after < ?")
            params.append(moment)
        elif status in ("online", "syncing"):
            clauses.append("offline_after >= ? AND sync_status = ?")
            params += [moment, "pending" if status == "syncing" else "idle"]
        if region is not None:
            clauses.append("region = ?")
            params.append(region)
        page, next_cursor = await self._page("nodes", clauses, params, limit, cursor)
        deployed = await self._deployments([row["id"] for row in page])
        nodes = [NodeRecord.from_row(row, deployed.get(row["id"], ())) for row in page]
        return nodes, next_cursor

    async def count_nodes_by_status(self, now: datetime) -> dict[str, int]:
        row = await self.db.fetchone(
            "SELECT"
            " SUM(CASE WHEN offline_after < ? THEN 1 ELSE 0 END) AS offline,"
            " SUM(CASE WHEN offline_after >= ? AND sync_status = 'pending' THEN 1 ELSE 0 END)"
            " AS syncing,"
            " SUM(CASE WHEN offline_after >= ? AND sync_status <> 'pending' THEN 1 ELSE 0 END)"
            " AS online"
            " FROM nodes",
            (format_time(now),) * 3,
        )
        return {key: int((row or {}).get(key) or 0) for key in ("online", "syncing", "offline")}

    async def record_liveness(self, marks: list[LivenessMark]) -> int:
        """Write a batch of liveness marks, ``LIVENESS_ROWS_PER_STATEMENT`` per statement.

        An agent version or state ETag a mark does not carry is kept. Unknown
        nodes match no row. Returns the rows updated. (Replicas flush about once a
        second each: one flushing late moves a node's times back by at most that.)
        """
        updated = 0
        for start in range(0, len(marks), LIVENESS_ROWS_PER_STATEMENT):
            chunk = marks[start : start + LIVENESS_ROWS_PER_STATEMENT]
            updated += await self._write(functools.partial(self._write_liveness, chunk))
        return updated

    async def heartbeat(
        self, node_id: str, now: datetime, agent_version: str | None, state_etag: str | None
    ) -> None:
        """One node's liveness, written at once (tools and tests; the API batches
        through ``appliance.liveness.LivenessBuffer``)."""
        stamp = await self.node_stamp(node_id)
        if stamp is None:
            raise NotFound("node not found", details={"node_id": node_id})
        offline = now + timedelta(seconds=OFFLINE_AFTER_INTERVALS * stamp.poll_interval_seconds)
        mark = LivenessMark(
            node_id, format_time(now), format_time(offline), agent_version, state_etag
        )
        await self.record_liveness([mark])

    async def _write_liveness(self, chunk: list[LivenessMark], tx: Connection) -> int:
        values = ", ".join("(?, ?, ?, ?, ?)" for _ in chunk)
        params: list[Any] = []
        for mark in chunk:
            params += [mark.node_id, mark.seen_at, mark.offline_after]
            params += [mark.agent_version, mark.state_etag]
        # VALUES columns are column1..column5 on SQLite and PostgreSQL alike.
        return await tx.execute(
            "UPDATE nodes SET"
            " last_heartbeat_at = v.column2, offline_after = v.column3,"
            " agent_version = COALESCE(v.column4, nodes.agent_version),"
            " state_etag = COALESCE(v.column5, nodes.state_etag)"
            f" FROM (VALUES {values}) AS v WHERE nodes.id = v.column1",
            params,
        )

    async def rotate_token(
        self, node_id: str, old_jti: str, new_jti: str, token_hash: str, expires_at: str
    ) -> bool:
        """Replace the token ``old_jti`` by ``new_jti``; False when that is not allowed.

        A rotation installs a token id the node has never held (every id it held
        is kept in ``node_token_jtis``), so no rotated-away token can be brought
        back. The one exception is repeating a rotation: presented with the token
        it rotated away and asking for the very ``new_jti`` it installed (which
        only the node that chose it knows), the rotation is re-done, so a node
        whose answer was lost is not locked out.
        """

        async def rotate(tx: Transaction) -> bool:
            row = await tx.fetchone(
                "SELECT token_jti, previous_token_jti FROM nodes WHERE id = ?", (node_id,)
            )
            if row is None:
                return False
            repeat = row["previous_token_jti"] == old_jti and row["token_jti"] == new_jti
            if not repeat:
                if row["token_jti"] != old_jti:
                    return False  # a rotated-away token asking for anything else
                held = await tx.fetchone(
                    "SELECT jti FROM node_token_jtis WHERE node_id = ? AND jti = ?",
                    (node_id, new_jti),
                )
                if held is not None:
                    return False  # a token id the node held once never comes back
                await self._remember_jti(tx, node_id, new_jti, format_time(now()))
            await tx.execute(
                "UPDATE nodes SET token_jti = ?, token_hash = ?, token_expires_at = ?,"
                " previous_token_jti = ? WHERE id = ?",
                (new_jti, token_hash, expires_at, old_jti, node_id),
            )
            tx.touch(node_id)  # the cached stamp names the old token
            return True

        return await self._write(rotate)

    async def _remember_jti(self, tx: Connection, node_id: str, jti: str, moment: str) -> None:
        await tx.execute(
            "INSERT INTO node_token_jtis (node_id, jti, issued_at) VALUES (?, ?, ?)",
            (node_id, jti, moment),
        )
