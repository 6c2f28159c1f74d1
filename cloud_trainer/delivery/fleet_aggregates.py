"""Collecting the fleet's aggregates: ``cloud-trainer fleet aggregates --out DIR``.

Agents publish their aggregate retained on ``<prefix>/<fleet>/aggregates/<device>``
(:mod:`shared.fleet_aggregates`); the broker hands the trainer the latest of each device on
subscribing. Each payload is checked (schema, threshold rule, that it is the topic's device's)
before it is written, atomically, to ``DIR/<device>.json``; a payload that fails is reported and
left out. ``cloud-trainer train --fleet-aggregates DIR`` reads the folder.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cloud_trainer.delivery.broker import BrokerConnection
from shared import topics
from shared.fleet_aggregates import AggregateRejected, FleetAggregate, parse_aggregate

log = logging.getLogger(__name__)


class AggregateCollector:
    """Keeps the latest valid aggregate of every device of a fleet, and the rejected ones' reasons."""

    def __init__(self, connection: BrokerConnection, fleet: str) -> None:
        self._lock = threading.Lock()
        self.payloads: dict[str, bytes] = {}
        self.rejected: dict[str, str] = {}
        self._prefix = topics.aggregates_topic(connection.prefix, fleet, "x")[:-1]
        connection.listen(topics.all_aggregates_topic(connection.prefix, fleet), self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        device = topic[len(self._prefix):] if topic.startswith(self._prefix) else ""
        if not device or not payload:
            return
        try:
            parse_aggregate(payload, device)
        except AggregateRejected as e:
            with self._lock:
                self.rejected[device] = str(e)
            return
        with self._lock:
            self.payloads[device] = payload
            self.rejected.pop(device, None)

    def snapshot(self) -> tuple[dict[str, bytes], dict[str, str]]:
        with self._lock:
            return dict(self.payloads), dict(self.rejected)


def write_aggregates(payloads: dict[str, bytes], out: Path) -> list[Path]:
    """Each device's checked payload to ``out/<device>.json`` (temp file, then rename)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for device, payload in sorted(payloads.items()):
        path = out / f"{topics.check_name(device, 'device id')}.json"
        temp = path.with_suffix(".json.tmp")
        temp.write_bytes(payload)
        os.replace(temp, path)
        written.append(path)
    return written


def describe(aggregate: FleetAggregate) -> str:
    return (f"{aggregate.device_id}: {aggregate.shoppers_total} shoppers, {len(aggregate.items)} items, "
            f"{len(aggregate.pair_first)} pairs (k = {aggregate.min_shoppers})")
