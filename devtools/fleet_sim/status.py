"""The status a simulated agent publishes: the shape of ``edge_agent.daemon.Agent.status`` (the
``AgentStatus`` schema of :mod:`shared.status_schema`), with the simulation's own figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.outcomes import OUTCOMES_SCHEMA

OFFLINE = b'{"state": "offline"}'
#: What the status says runs the model: the simulation loads no interpreter.
RUNTIME = "simulated"


@dataclass
class StatusState:
    device_id: str
    fleet: str
    channel: str
    key_id: str
    model_version: int | None = None
    model_expires: str | None = None
    last_update: dict[str, object] | None = None
    discarded: dict[str, object] = field(default_factory=lambda: {"count": 0, "reason": "", "at": None})

    def report(self, version: int | None, result: str, reason: str) -> None:
        self.last_update = {"version": version, "result": result, "reason": reason, "at": round(time.time(), 3)}

    def discard(self, reason: str) -> None:
        count = int(self.discarded["count"]) + 1  # type: ignore[call-overload]
        self.discarded = {"count": count, "reason": reason, "at": round(time.time(), 3)}

    def online(self) -> dict[str, object]:
        now = time.time()
        return {
            "state": "online", "device_id": self.device_id, "fleet": self.fleet, "channel": self.channel,
            "model_version": self.model_version, "model_expires": self.model_expires,
            "model_stale": None if self.model_version is None else False,
            "runtime": RUNTIME if self.model_version is not None else None,
            "last_update": self.last_update, "discarded": self.discarded,
            "health": {"requests": 0, "server_errors": 0, "p50_ms": None, "p99_ms": None},
            "outcomes": {"schema": OUTCOMES_SCHEMA, "min_shoppers": 20, "suppressed_cells": 0, "cells": []},
            "rules": {"version": None, "expires": None, "stale": None, "counts": {}, "last": None},
            "erasure": None,
            "keys": {"version": 0, "trusted": [self.key_id], "retired": [], "revoked": [], "last": None},
            "at": round(now, 3),
        }
