"""Canary verdicts (pure): from the agents' status messages to promote, wait or abort.

A canary is healthy once it runs the new version, is online, its last update activated that
version, it has served without server errors above the allowed rate since, and it has stayed so
for the soak time. It has failed when it refused or failed the version, went offline after the
rollout began, or answers with too many server errors. The rollout aborts as soon as the share of
failed canaries passes ``max_failure_rate``, or when the deadline passes before a verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Decision(StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    ABORT = "abort"


@dataclass(frozen=True)
class RolloutPolicy:
    max_failure_rate: float = 0.0  # share of canaries allowed to fail; 0: any failure aborts
    max_server_error_rate: float = 0.01  # 5xx answers per request on the new version
    soak_s: float = 30.0  # how long every canary must stay healthy
    timeout_s: float = 600.0


@dataclass
class Verdict:
    decision: Decision
    healthy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # device -> why
    waiting: list[str] = field(default_factory=list)
    why: str = ""


@dataclass
class _Canary:
    healthy_since: float | None = None
    errors_at_start: tuple[int, int] | None = None  # (requests, server errors) when first on the version


def _errors(health: Mapping[str, Any]) -> int:
    """5xx answers plus answers where the model returned garbage (popular items were served)."""
    return int(health.get("server_errors", 0)) + int(health.get("model_errors", 0))


class CanaryJudge:
    def __init__(self, version: int, canaries: list[str], policy: RolloutPolicy, started: float) -> None:
        if not canaries:
            raise ValueError("a rollout needs at least one canary device")
        self.version = version
        self.policy = policy
        self.started = started
        self._canaries = {device: _Canary() for device in canaries}

    def _failure(self, status: Mapping[str, Any] | None, canary: _Canary) -> str | None:
        if status is None:
            return None
        last = status.get("last_update") or {}
        if last.get("version") == self.version and last.get("result") in ("failed", "rejected"):
            return f"{last.get('result')}: {last.get('reason')}"
        if last.get("result") == "rejected" and last.get("version") is None and last.get("at", 0) >= self.started:
            return f"rejected: {last.get('reason')}"
        if status.get("state") == "offline" and float(status.get("at") or self.started) >= self.started:
            return "offline"
        health = status.get("health") or {}
        if canary.errors_at_start is not None and status.get("model_version") == self.version:
            requests = int(health.get("requests", 0)) - canary.errors_at_start[0]
            errors = _errors(health) - canary.errors_at_start[1]
            if errors > 0 and errors > self.policy.max_server_error_rate * max(requests, 1):
                return f"{errors} server or model errors in {requests} requests on version {self.version}"
        return None

    def judge(self, statuses: Mapping[str, Mapping[str, Any]], now: float) -> Verdict:
        verdict = Verdict(Decision.WAIT)
        for device, canary in self._canaries.items():
            status = statuses.get(device)
            why = self._failure(status, canary)
            if why is not None:
                verdict.failed[device] = why
                continue
            on_version = (
                status is not None and status.get("state") == "online"
                and status.get("model_version") == self.version
            )
            if not on_version:
                canary.healthy_since = None
                verdict.waiting.append(device)
                continue
            assert status is not None
            if canary.healthy_since is None:
                health = status.get("health") or {}
                canary.healthy_since = now
                canary.errors_at_start = (int(health.get("requests", 0)), _errors(health))
            if now - canary.healthy_since >= self.policy.soak_s:
                verdict.healthy.append(device)
            else:
                verdict.waiting.append(device)
        failure_rate = len(verdict.failed) / len(self._canaries)
        if failure_rate > self.policy.max_failure_rate:
            verdict.decision = Decision.ABORT
            verdict.why = (f"{len(verdict.failed)} of {len(self._canaries)} canaries failed: "
                           + "; ".join(f"{d}: {w}" for d, w in sorted(verdict.failed.items())))
        elif not verdict.waiting:
            verdict.decision = Decision.PROMOTE
            verdict.why = f"{len(verdict.healthy)} canaries healthy for {self.policy.soak_s:g}s"
        elif now - self.started > self.policy.timeout_s:
            verdict.decision = Decision.ABORT
            verdict.why = (f"no verdict after {self.policy.timeout_s:g}s; still waiting for "
                           + ", ".join(sorted(verdict.waiting)))
        return verdict
