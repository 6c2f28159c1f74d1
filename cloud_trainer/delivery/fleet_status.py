"""The ML engineer's view of the fleet over MQTT: the agents' statuses.

Statuses are the retained messages agents publish on ``<prefix>/<fleet>/status/<device>``;
``cloud-trainer fleet status`` prints them, and rollouts (:mod:`cloud_trainer.delivery.rollout`)
judge the canaries by them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from cloud_trainer.delivery.broker import BrokerConnection
from shared import topics


class FleetWatcher:
    """Keeps the latest status of every agent of a fleet."""

    def __init__(self, connection: BrokerConnection, fleet: str) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[str, dict[str, Any]] = {}
        self._prefix = topics.status_topic(connection.prefix, fleet, "x")[:-1]
        connection.listen(topics.all_statuses_topic(connection.prefix, fleet), self._on_status)

    def _on_status(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self._prefix):
            return
        try:
            status = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return
        if isinstance(status, dict):
            with self._lock:
                self._statuses[topic[len(self._prefix):]] = status

    def statuses(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._statuses)


def status_table(statuses: Mapping[str, Mapping[str, Any]], now: float) -> str:
    """One line per agent: what ``cloud-trainer fleet status`` prints."""
    header = ("device", "state", "channel", "version", "stale", "last update", "requests", "p50 ms", "p99 ms", "5xx")
    rows = [header]
    for device in sorted(statuses):
        s = statuses[device]
        last = s.get("last_update") or {}
        health = s.get("health") or {}
        outcome = f"{last.get('result', '-')} {last.get('version') or ''}".strip()
        if last.get("result") in ("failed", "rejected"):
            outcome += f" ({str(last.get('reason', ''))[:60]})"
        age = f", {int(now - float(s['at']))}s ago" if s.get("at") and s.get("state") == "online" else ""
        rows.append((device, f"{s.get('state', '?')}{age}", str(s.get("channel", "-")), str(s.get("model_version")),
                     "STALE" if s.get("model_stale") else "no", outcome, str(health.get("requests", "-")),
                     str(health.get("p50_ms", "-")), str(health.get("p99_ms", "-")),
                     str(health.get("server_errors", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
