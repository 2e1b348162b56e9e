"""Fleet settings (auto-release, default release) and node pins.

Both change nodes' effective releases (appliance/store/releases.py), so each
write bumps the fleet generation in its own transaction, naming the nodes it
moves when it knows them (their own MQTT topics) or the whole fleet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.store.db import Connection
from appliance.store.records import NodeRecord
from appliance.store.releases import (
    _IN_ACTIVE_ROLLOUT,
    FleetSettings,
    ReleaseStore,
    _fleet,
    _latest,
)
from edgesync.errors import NodeInRollout, NotFound

if TYPE_CHECKING:  # annotations only
    from appliance.store.transaction import Transaction


class FleetStore(ReleaseStore):
    """The SQL of ``fleet_state``'s settings and ``nodes.pinned_release_id``."""

    async def update_fleet(
        self,
        *,
        auto_release: bool | None = None,
        default_release_id: str | None = None,
        set_default: bool = False,
    ) -> FleetSettings:
        """Change any subset; ``default_release_id`` only with ``set_default``."""

        async def update(tx: Transaction) -> FleetSettings:
            before = await _fleet(tx)
            if set_default and default_release_id is not None:
                await _require_release(tx, default_release_id)
            auto = before.auto_release if auto_release is None else auto_release
            default = default_release_id if set_default else before.default_release_id
            latest = await _latest(tx)
            if before.auto_release and not auto and latest is None:
                # No release yet (a fleet from before releases, or an empty one): the
                # fleet as it is becomes release 1, so every node has one to stay on.
                latest = await self._auto_release(tx, "auto_release_off", force=True)
            if before.auto_release and not auto:
                # Followers stay where they are: their release becomes explicit, and
                # nodes without one (new nodes) get the default, the latest if unset.
                if latest is not None:
                    await tx.execute(
                        "UPDATE nodes SET release_id = ? WHERE release_id IS NULL", (latest.id,)
                    )
                    if default is None:
                        default = latest.id
            elif auto and not before.auto_release:
                # Back to tracking the latest: every node outside an active rollout.
                await tx.execute(
                    "UPDATE nodes SET release_id = NULL WHERE release_id IS NOT NULL"
                    f" AND id NOT IN ({_IN_ACTIVE_ROLLOUT})"
                )
            after = FleetSettings(auto, default)
            if after != before:
                await tx.execute(
                    "UPDATE fleet_state SET auto_release = ?, default_release_id = ? WHERE id = 1",
                    (1 if after.auto_release else 0, after.default_release_id),
                )
                await self._bump_generation(tx, "fleet_settings")
            return after

        return await self._write(update)

    async def pin_node(self, node_id: str, release_id: str | None) -> NodeRecord:
        """Pin ``node_id`` to ``release_id`` (None: unpin). A node in an active rollout
        cannot be pinned: the rollout owns its target until it ends."""

        async def pin(tx: Transaction) -> None:
            row = await tx.fetchone("SELECT pinned_release_id FROM nodes WHERE id = ?", (node_id,))
            if row is None:
                raise NotFound("node not found", details={"node_id": node_id})
            if release_id is not None:
                await _require_release(tx, release_id)
                busy = await tx.fetchone(
                    f"SELECT node_id FROM ({_IN_ACTIVE_ROLLOUT}) a WHERE a.node_id = ?",
                    (node_id,),
                )
                if busy is not None:
                    raise NodeInRollout(
                        "the node is in an active rollout", details={"node_ids": [node_id]}
                    )
            if row["pinned_release_id"] == release_id:
                return
            await tx.execute(
                "UPDATE nodes SET pinned_release_id = ? WHERE id = ?", (release_id, node_id)
            )
            await self._bump_generation(
                tx, "node_pinned" if release_id else "node_unpinned", [node_id]
            )

        await self._write(pin)
        return await self.get_node(node_id)  # type: ignore[attr-defined,no-any-return]


async def _require_release(tx: Connection, release_id: str) -> None:
    row = await tx.fetchone("SELECT id FROM releases WHERE id = ?", (release_id,))
    if row is None:
        raise NotFound("release not found", details={"release_id": release_id})
