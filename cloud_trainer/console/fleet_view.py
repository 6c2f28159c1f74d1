"""The fleet's statuses laid out for the console (pure): one row per agent, the rollouts in
progress, the outcome rows of :func:`cloud_trainer.delivery.outcome_table.outcome_rows`.

Statuses come from devices: nothing here trusts their types. Every figure is read through
:func:`_number` and shown as text; the templates escape it all.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud_trainer.delivery.outcome_table import outcome_rows
from shared import topics

#: A status older than this (several status intervals) is flagged as late.
LATE_AFTER_S = 120.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None or number != int(number) else int(number)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, limit: int = 120) -> str:
    return "-" if value is None else str(value)[:limit]


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


@dataclass(frozen=True)
class AgentRow:
    device: str
    state: str
    channel: str
    version: int | None
    stale: bool | None  # None: not reported (offline)
    seen: str  # how long ago the status was published
    late: bool
    last_update: str
    update_failed: bool
    requests: str
    p50_ms: str
    p99_ms: str
    server_errors: str


def agent_rows(statuses: Mapping[str, Mapping[str, Any]], now: float) -> list[AgentRow]:
    rows = []
    for device in sorted(statuses):
        s = statuses[device]
        health, last = _mapping(s.get("health")), _mapping(s.get("last_update"))
        at = _number(s.get("at"))
        age = None if at is None else max(0.0, now - at)
        result = _text(last.get("result"), 20) if last else "-"
        update = f"{result} {_text(last.get('version'), 20)}" if last else "-"
        failed = result in ("failed", "rejected")
        if failed:
            update += f": {_text(last.get('reason'), 80)}"
        rows.append(AgentRow(
            device=_text(device), state=_text(s.get("state"), 20), channel=_text(s.get("channel"), 40),
            version=_int(s.get("model_version")),
            stale=s.get("model_stale") if isinstance(s.get("model_stale"), bool) else None,
            seen="-" if age is None else _age(age), late=age is not None and age > LATE_AFTER_S,
            last_update=update, update_failed=failed,
            requests=_text(_int(health.get("requests"))), p50_ms=_text(_number(health.get("p50_ms"))),
            p99_ms=_text(_number(health.get("p99_ms"))), server_errors=_text(_int(health.get("server_errors")))))
    return rows


@dataclass
class Rollout:
    """Canaries on a newer version than the stable devices run: a rollout in progress (or one that
    stopped half-way)."""

    version: int
    stable_version: int | None
    canaries_on_version: list[str] = field(default_factory=list)
    canaries_elsewhere: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # device -> last update's refusal of the version
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # rows of this version and the stable one


def _online(statuses: Mapping[str, Mapping[str, Any]], channel: str) -> dict[str, Mapping[str, Any]]:
    return {d: s for d, s in statuses.items() if s.get("state") == "online" and s.get("channel") == channel}


def rollouts(statuses: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]]) -> list[Rollout]:
    """The versions online canaries run above the stable devices' most common version (any, when
    no stable device is online), newest first; ``rows``: :func:`outcome_rows` of the statuses."""
    stable_versions = Counter(v for s in _online(statuses, topics.STABLE).values()
                              if (v := _int(s.get("model_version"))) is not None)
    stable = stable_versions.most_common(1)[0][0] if stable_versions else None
    canaries = _online(statuses, topics.CANARY)
    versions = sorted({v for s in canaries.values() if (v := _int(s.get("model_version"))) is not None
                       and (stable is None or v > stable)}, reverse=True)
    found = []
    for version in versions:
        rollout = Rollout(version, stable)
        for device, s in sorted(canaries.items()):
            on = _int(s.get("model_version")) == version
            (rollout.canaries_on_version if on else rollout.canaries_elsewhere).append(device)
            last = _mapping(s.get("last_update"))
            if _int(last.get("version")) == version and last.get("result") in ("failed", "rejected"):
                rollout.failed[device] = f"{_text(last.get('result'), 20)}: {_text(last.get('reason'), 80)}"
        rollout.outcomes = [r for r in rows if r["model_version"] in (version, stable)]
        found.append(rollout)
    return found


@dataclass
class FleetView:
    fleet: str
    agents: list[AgentRow]
    rollouts: list[Rollout]
    outcomes: list[dict[str, Any]]


def fleet_view(fleet: str, statuses: Mapping[str, Mapping[str, Any]], now: float) -> FleetView:
    rows = outcome_rows(statuses)
    return FleetView(fleet, agent_rows(statuses, now), rollouts(statuses, rows), rows)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
