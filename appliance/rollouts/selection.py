"""Which nodes a rollout selects (pure): every given key must match; stable order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    id: str
    region: str | None
    labels: dict[str, str]
    pinned: bool


def select(nodes: Iterable[Candidate], selector: dict[str, Any]) -> list[str]:
    """Ids of the unpinned nodes matching ``selector``, by node id ascending."""
    region = selector.get("region")
    labels: dict[str, str] = selector.get("labels") or {}
    wanted = set(selector.get("node_ids") or ())
    chosen = [
        node.id
        for node in nodes
        if not node.pinned
        and (region is None or node.region == region)
        and all(node.labels.get(k) == v for k, v in labels.items())
        and (not wanted or node.id in wanted)
    ]
    return sorted(chosen)
