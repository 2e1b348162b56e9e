"""The metadata store: every SQL statement of the control plane, one module per aggregate.

:class:`Store` is the one object the app holds; its SQL lives in the modules of
the aggregates it joins (``nodes``, ``functions``, ``instances``, ``targets``,
``syncs``), over the transaction and generation core of ``base``. All of it runs
unchanged on SQLite and PostgreSQL/CockroachDB.
"""

from __future__ import annotations

from appliance.store.base import decode_cursor, encode_cursor
from appliance.store.fleet import FleetStore
from appliance.store.functions import STALE_UPLOAD, FunctionStore
from appliance.store.instances import InstanceStore
from appliance.store.nodes import NodeStore
from appliance.store.rollouts import RolloutControl
from appliance.store.syncs import SyncStore
from appliance.store.targets import TargetStore

__all__ = ["STALE_UPLOAD", "Store", "decode_cursor", "encode_cursor"]


class Store(
    FleetStore,
    RolloutControl,
    NodeStore,
    FunctionStore,
    InstanceStore,
    TargetStore,
    SyncStore,
):
    """Domain-level reads and writes over a :class:`~appliance.store.db.Database`.

    ``FleetStore`` (over ``ReleaseStore``) comes first: ``ReleaseStore._bump_generation``
    turns every bump that changes the fleet's v1 target into an auto-release, in the
    same transaction.
    """
