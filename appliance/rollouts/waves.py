"""A rollout request's settings, parsed and checked; waves and failure budgets (pure).

Waves are cumulative sizes: ``[1, "25%", "100%"]`` over 40 selected nodes is
1, then 10, then 40 nodes holding the release. A percentage rounds up, so a
wave is never empty while nodes remain; the last wave must cover everyone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edgesync.errors import ValidationFailed

MAX_WAVES = 100


@dataclass(frozen=True)
class RolloutSettings:
    release_id: str
    selector: dict[str, Any] = field(default_factory=dict)
    waves: tuple[int | str, ...] = ("100%",)
    max_failures: int | str = 0
    wave_timeout_seconds: int = 900
    observe_seconds: int = 0
    max_function_error_rate: float | None = None
    auto_rollback: bool = True
    allow_irreversible: bool = False

    def to_api(self) -> dict[str, Any]:
        body = asdict(self)
        body["waves_spec"] = list(self.waves)
        del body["waves"]
        return body


def _invalid(message: str, name: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": name})


def _size(value: Any, name: str) -> int | str:
    """A count (int >= 0) or a percentage string "N%" (0 < N <= 100)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.endswith("%"):
        number = value[:-1]
        try:
            share = float(number)
        except ValueError:
            share = -1.0
        if 0 <= share <= 100 and math.isfinite(share):
            return value
    raise _invalid(f'{name} must be a count or a percentage like "25%"', name)


def _int(body: dict[str, Any], name: str, default: int, high: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise _invalid(f"{name} must be an integer from 0 to {high}", name)
    return value


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false", name)
    return value


def parse_settings(body: dict[str, Any]) -> RolloutSettings:
    release_id = body.get("release_id")
    if not isinstance(release_id, str) or not release_id:
        raise _invalid("release_id is required", "release_id")
    selector = body.get("selector") or {}
    if not isinstance(selector, dict) or set(selector) - {"region", "labels", "node_ids"}:
        raise _invalid("selector may hold region, labels and node_ids", "selector")
    if "region" in selector and not isinstance(selector["region"], str):
        raise _invalid("selector.region must be a string", "selector.region")
    labels = selector.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise _invalid("selector.labels must map strings to strings", "selector.labels")
    ids = selector.get("node_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _invalid("selector.node_ids must be a list of node ids", "selector.node_ids")
    waves = body.get("waves", ["100%"])
    if not isinstance(waves, list) or not 1 <= len(waves) <= MAX_WAVES:
        raise _invalid(f"waves must be a list of 1 to {MAX_WAVES} sizes", "waves")
    sizes = tuple(_size(w, "waves") for w in waves)
    if sizes[-1] != "100%" and not isinstance(sizes[-1], int):
        raise _invalid('the last wave must cover every selected node ("100%")', "waves")
    rate = body.get("max_function_error_rate")
    if rate is not None and (
        not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1
    ):
        raise _invalid(
            "max_function_error_rate must be a fraction from 0 to 1", "max_function_error_rate"
        )
    return RolloutSettings(
        release_id=release_id,
        selector=dict(selector),
        waves=sizes,
        max_failures=_size(body.get("max_failures", 0), "max_failures"),
        wave_timeout_seconds=_int(body, "wave_timeout_seconds", 900, 7 * 86400),
        observe_seconds=_int(body, "observe_seconds", 0, 7 * 86400),
        max_function_error_rate=None if rate is None else float(rate),
        auto_rollback=_bool(body, "auto_rollback", True),
        allow_irreversible=_bool(body, "allow_irreversible", False),
    )


def absolute(size: int | str, total: int) -> int:
    """A wave size or failure budget as a node count out of ``total``."""
    if isinstance(size, int):
        return size
    return math.ceil(total * float(size[:-1]) / 100)


def wave_sizes(waves: tuple[int | str, ...], total: int) -> list[int]:
    """Cumulative node counts per wave, non-decreasing, the last one ``total``.

    A count larger than the selection is capped; the last wave must reach
    ``total`` (a plain count that falls short is refused)."""
    sizes: list[int] = []
    for spec in waves:
        count = min(total, absolute(spec, total))
        sizes.append(max(count, sizes[-1] if sizes else 0))
    if sizes[-1] != total:
        raise _invalid(f"the last wave covers {sizes[-1]} of {total} selected nodes", "waves")
    return sizes


def over_budget(failures: int, given: int, max_failures: int | str) -> bool:
    """Whether ``failures`` exceed the budget: a count, or a share of the nodes
    given the release so far."""
    return (
        failures > absolute(max_failures, given)
        if isinstance(max_failures, str)
        else (failures > max_failures)
    )
