"""The outcome contract (pure): experiment arms, outcome events, and the aggregate counts an
agent reports in its MQTT status for the cloud to judge models by.

On the device each recommendation response carries a ``request_id``; the app reports which items
it showed (``impression``) and which the shopper opened (``click``), and a cart or purchase of a
recommended item by the same shopper within the attribution window is a **conversion** of the
request that recommended it. The agent adds these up per (model version, arm) in
:class:`OutcomeCell` s; only those cells leave the box, and only once :data:`DEFAULT_MIN_SHOPPERS`
(``experiment.min_shoppers``) distinct shoppers have been served in the cell: no user id, no item
id, and no count of a cell so small that it could describe one shopper.

Arms: a stable, hash-chosen share of shoppers (``experiment.holdout_share``) is served the
popularity list instead of the model (the **holdout**), the rest the model; comparing the two
gives the model's lift, not just its click rate. The same shopper is always in the same arm for a
given salt, on every device of the fleet.

The trainer reads cells back with :func:`cells_of_status` (tolerant: a malformed status counts
as no cells) and judges rollouts on them (:mod:`cloud_trainer.delivery.outcome_judge`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

#: Marks the ``outcomes`` object of an agent status.
OUTCOMES_SCHEMA = "edge-rec.outcomes/1"

#: Cells (model version x arm) are reported once this many distinct shoppers were served in them.
DEFAULT_MIN_SHOPPERS = 20
#: A cart or purchase this long after a request that recommended the item is credited to it.
DEFAULT_ATTRIBUTION_WINDOW_S = 1800

#: A request id: what ``GET /v1/recommendations`` answers with, and outcome events quote.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


class Arm(StrEnum):
    MODEL = "model"  # the model serving on the device
    HOLDOUT = "holdout"  # the control: the popularity list under the same filters


class OutcomeKind(StrEnum):
    """Events about recommendations themselves (not about taste: they never enter a history)."""

    IMPRESSION = "impression"  # the app showed the item of the request to the shopper
    CLICK = "click"  # the shopper opened it


def arm_of(user_id: str, holdout_share: float, salt: str) -> Arm:
    """The shopper's arm: a stable hash of (salt, user id) against ``holdout_share``.

    SHA-256 of the salted id, its first 8 bytes read as a fraction of 2**64: uniform, and
    independent of anything the model or the shop knows about the shopper."""
    if holdout_share <= 0.0:
        return Arm.MODEL
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return Arm.HOLDOUT if int.from_bytes(digest[:8], "big") / 2.0**64 < holdout_share else Arm.MODEL


def is_request_id(value: object) -> bool:
    return isinstance(value, str) and _REQUEST_ID.match(value) is not None


@dataclass(frozen=True)
class OutcomeCell:
    """What one (model version, arm) earned on one device, counted from the cell's first request.

    ``requests``: recommendation responses served; ``converted_requests``: those with at least one
    converted item (the unit of the rollout test: a Bernoulli trial per request). ``conversions``
    counts (request, item) pairs carted or bought within the window; ``revenue`` sums the
    ``price`` the app sent with those carts and purchases (0 when it sends none).
    """

    model_version: int
    arm: Arm
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    converted_requests: int = 0
    revenue: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "arm": self.arm.value, "revenue": round(self.revenue, 2)}

    def plus(self, other: OutcomeCell) -> OutcomeCell:
        """The sum of two cells (of devices, or of the same version and arm)."""
        counts = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)[2:]}
        return OutcomeCell(self.model_version, self.arm, **counts)


_COUNTS = tuple(f.name for f in fields(OutcomeCell)[2:])


def outcomes_status(cells: Iterable[OutcomeCell], min_shoppers: int, suppressed: int) -> dict[str, Any]:
    """The ``outcomes`` object of a status: the cells that passed the threshold, and how many did not."""
    return {
        "schema": OUTCOMES_SCHEMA,
        "min_shoppers": int(min_shoppers),
        "suppressed_cells": int(suppressed),
        "cells": [cell.to_json() for cell in cells],
    }


def _count(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


def cells_of_status(status: Mapping[str, Any]) -> list[OutcomeCell]:
    """The outcome cells of one agent status; a missing or malformed ``outcomes`` gives none, a
    malformed cell is skipped (statuses come from devices, not from us)."""
    outcomes = status.get("outcomes")
    if not isinstance(outcomes, Mapping) or outcomes.get("schema") != OUTCOMES_SCHEMA:
        return []
    raw_cells = outcomes.get("cells")
    found = []
    for raw in raw_cells if isinstance(raw_cells, list) else []:
        if not isinstance(raw, Mapping):
            continue
        version, arm = raw.get("model_version"), raw.get("arm")
        counts = {name: _count(raw.get(name, 0)) for name in _COUNTS}
        if (not isinstance(version, int) or isinstance(version, bool) or arm not in set(Arm)
                or any(v is None for v in counts.values())):
            continue
        found.append(OutcomeCell(version, Arm(arm), **{
            name: float(v) if name == "revenue" else int(v)  # type: ignore[arg-type]
            for name, v in counts.items()}))
    return found


def fleet_cells(statuses: Mapping[str, Mapping[str, Any]],
                devices: Iterable[str] | None = None) -> dict[tuple[int, Arm], OutcomeCell]:
    """Cells summed over devices (all, or ``devices``), by (model version, arm)."""
    chosen = statuses if devices is None else {d: statuses[d] for d in devices if d in statuses}
    total: dict[tuple[int, Arm], OutcomeCell] = {}
    for status in chosen.values():
        for cell in cells_of_status(status):
            key = (cell.model_version, cell.arm)
            total[key] = total[key].plus(cell) if key in total else cell
    return total
