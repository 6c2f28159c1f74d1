"""Simulated stores for the fleet aggregates: an events table's shoppers hashed to ``stores``
stores, each store's aggregate made by the agent's own code (:func:`edge_agent.cooccurrence.aggregate`)
over what its agent would hold at ``now``: each shopper's last
:data:`shared.events.STORED_EVENTS_PER_USER` events within :data:`shared.events.RETENTION_DAYS`."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable
from edge_agent.cooccurrence import aggregate
from shared.events import RETENTION_DAYS, STORED_EVENTS_PER_USER, EventKind
from shared.fleet_aggregates import DEFAULT_MAX_PAIRS, FleetAggregate


class Event(NamedTuple):
    item_id: str
    kind: EventKind
    timestamp: float


def store_of(user_id: str, stores: int) -> int:
    """A shopper's store: a stable hash of the id (the same on every run and machine)."""
    return zlib.crc32(user_id.encode()) % stores


def store_aggregates(table: EventTable, now: float, stores: int, min_shoppers: int,
                     max_pairs: int = DEFAULT_MAX_PAIRS) -> list[FleetAggregate]:
    """One aggregate per store of ``table``'s events before ``now``."""
    keep = (table.timestamp < now) & (table.timestamp >= now - RETENTION_DAYS * 86400.0)
    order = np.flatnonzero(keep)
    order = order[np.lexsort((table.timestamp[order], table.user[order]))]
    bounds = np.flatnonzero(np.r_[True, np.diff(table.user[order]) != 0, True])
    by_store: list[list[list[Event]]] = [[] for _ in range(stores)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[max(lo, hi - STORED_EVENTS_PER_USER) : hi]  # what the agent keeps
        user = table.user_ids[table.user[rows[0]]]
        by_store[store_of(user, stores)].append([Event(table.item_ids[table.item[r]], KINDS_BY_CODE[table.kind[r]],
                                                       float(table.timestamp[r])) for r in rows])
    return [aggregate(histories, f"store-{n}", now - 1.0, min_shoppers=min_shoppers, max_pairs=max_pairs)
            for n, histories in enumerate(by_store)]


def write_store_aggregates(aggregates: list[FleetAggregate], out: Path) -> int:
    """Each aggregate to ``out/<device>.json`` as ``fleet aggregates`` writes them; total bytes."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for a in aggregates:
        data = a.to_bytes()
        (out / f"{a.device_id}.json").write_bytes(data)
        total += len(data)
    return total
