"""Canary rollouts and rollbacks over MQTT, and the canary verdicts they are driven by.

A rollout releases a version to the canary channel, watches the canaries' statuses
(:mod:`cloud_trainer.delivery.fleet_status`) and promotes it to stable when every canary is
healthy, or aborts and rolls the canaries back.

Verdicts (:class:`CanaryJudge`, pure): a canary is healthy once it runs the new version, is online,
its last update activated that version, it has served without server errors above the allowed
rate since, and it has stayed so for the soak time. It has failed when it refused or failed the
version, went offline after the rollout began, or answers with too many server errors. The
rollout aborts as soon as the share of failed canaries passes ``max_failure_rate``, or when the
deadline passes before a verdict.

With an outcome test (:mod:`cloud_trainer.delivery.outcome_judge`), healthy canaries are not
enough: the version is promoted only when the test also says so, and aborted when it says the
version converts worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.delivery.broker import BrokerConnection
from cloud_trainer.delivery.fleet_status import FleetWatcher
from cloud_trainer.delivery.outcome_judge import OutcomeJudge, OutcomePolicy
from cloud_trainer.delivery.publisher import (
    channel_manifest,
    fetch_files,
    manifest_of,
    published_manifests,
    read_bundle,
    release,
    rollback_instruction,
)
from cloud_trainer.delivery.verdict import Decision, Verdict
from cloud_trainer.errors import ReleaseError
from shared import topics
from shared.bundle import Manifest
from shared.signing import load_private_key


@dataclass(frozen=True)
class RolloutPolicy:
    max_failure_rate: float = 0.0  # share of canaries allowed to fail; 0: any failure aborts
    max_server_error_rate: float = 0.01  # 5xx answers per request on the new version
    soak_s: float = 30.0  # how long every canary must stay healthy
    timeout_s: float = 600.0


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


@dataclass
class RolloutResult:
    version: int
    decision: Decision
    why: str
    rollback_version: int | None = None
    stable_on_version: int = 0
    stable_total: int = 0


def _stable_devices(statuses: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(d for d, s in statuses.items() if s.get("channel", topics.STABLE) == topics.STABLE
                  and s.get("state") == "online")


class _Progress:
    """Says each status line once, when it changes."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.last_line = say, ""

    def line(self, line: str) -> None:
        if line != self.last_line:
            self.say(line)
            self.last_line = line


def roll_out(
    connection: BrokerConnection,
    bundle: Path,
    canaries: list[str],
    policy: RolloutPolicy,
    key_path: Path,
    progress: Callable[[str], None] = print,
    poll_s: float = 0.5,
    outcome: OutcomePolicy | None = None,
) -> RolloutResult:
    """Canary first; stable only when every canary is healthy (and, with ``outcome``, the outcome
    test says promote); otherwise abort and roll back.

    The version is signed as released to the canary channel only, and signed again for both
    channels when it is promoted: until then no stable agent accepts it, wherever it is published.
    On abort the canary channel gets a signed rollback instruction that re-delivers the stable
    version and revokes the aborted one (when there is a stable version), so no canary keeps
    following the bad version and no agent installs it from a replay.
    """
    key = load_private_key(key_path.read_bytes())
    envelope, files = read_bundle(bundle)
    manifest = manifest_of(envelope, key.public_key())
    fleet, version = manifest.fleet, manifest.version
    if manifest.targets:
        # a rollout promotes through the fleet's channels and rolls them back to the stable version:
        # neither is what a bundle of a few devices (a store's) needs
        raise ReleaseError(f"version {version} targets {', '.join(manifest.targets[:5])}: a rollout is for fleet-wide "
                           "versions; send a targeted one with 'publish' (to --channel canary first if you wish)")
    watcher = FleetWatcher(connection, fleet)
    stable = channel_manifest(connection, fleet, topics.STABLE, key.public_key())
    judge = CanaryJudge(version, canaries, policy, started=time.time())
    outcomes = None if outcome is None else OutcomeJudge(version, canaries, outcome,
                                                         None if stable is None else stable.version)
    canary = release(connection, envelope, topics.CANARY, files, key, channels=(topics.CANARY,))
    progress(f"version {version} published to the canary channel; watching {', '.join(canaries)}")
    lines, evidence = _Progress(progress), _Progress(progress)
    verdict = Verdict(Decision.WAIT)
    while verdict.decision is Decision.WAIT:
        time.sleep(poll_s)
        statuses, now = watcher.statuses(), time.time()
        verdict = judge.judge(statuses, now)
        lines.line(f"canaries: {len(verdict.healthy)} healthy, {len(verdict.waiting)} waiting, "
                   f"{len(verdict.failed)} failed")
        if outcomes is not None:
            verdict = outcomes.gate(verdict, statuses, timed_out=now - judge.started > policy.timeout_s)
            evidence.line(outcomes.evidence)
    if verdict.decision is Decision.ABORT:
        progress(f"ABORT: {verdict.why}")
        return _abort(connection, version, verdict.why, stable, key, progress)
    progress(f"promoting version {version} to stable: {verdict.why}")
    release(connection, canary.envelope, topics.STABLE, None, key, channels=topics.CHANNELS)
    return _wait_for_stable(watcher, version, verdict.why, policy, lines, poll_s)


def _abort(connection: BrokerConnection, version: int, why: str, stable: Manifest | None, key: Ed25519PrivateKey,
           progress: Callable[[str], None]) -> RolloutResult:
    """Roll the canary channel back to the ``stable`` version's files, as version ``version + 1``
    that revokes ``version`` (nothing to go back to without a stable version)."""
    result = RolloutResult(version, Decision.ABORT, why)
    if stable is not None:
        result.rollback_version = version + 1
        previous = fetch_files(connection, stable)
        instruction = rollback_instruction(stable, version + 1, key, revokes=(version,))
        release(connection, instruction, topics.CANARY, previous, key, channels=(topics.CANARY,))
        progress(f"canary channel rolled back to version {stable.version}'s files as version {version + 1}, "
                 f"which revokes version {version}")
    return result


def _wait_for_stable(watcher: FleetWatcher, version: int, why: str, policy: RolloutPolicy, lines: _Progress,
                     poll_s: float) -> RolloutResult:
    """After the promotion: wait until every online stable agent runs ``version``, or the timeout."""
    deadline = time.monotonic() + policy.timeout_s
    while True:
        statuses = watcher.statuses()
        devices = _stable_devices(statuses)
        done = [d for d in devices if statuses[d].get("model_version") == version]
        line = f"stable: {len(done)} of {len(devices)} online agents on version {version}"
        lines.line(line)
        if len(done) == len(devices) or time.monotonic() > deadline:
            outcome = why if len(done) == len(devices) else f"timed out: {line}"
            return RolloutResult(version, Decision.PROMOTE, outcome, None, len(done), len(devices))
        time.sleep(poll_s)


def roll_back(
    connection: BrokerConnection, bundle: Path, key_path: Path, progress: Callable[[str], None] = print
) -> int:
    """Re-deliver an earlier bundle's files to every channel as a new, signed version that revokes
    the versions the channels named (newer than the earlier bundle). Its version is above every
    published one, versions targeted at single devices included, so every agent takes it."""
    key = load_private_key(key_path.read_bytes())
    envelope, files = read_bundle(bundle)
    earlier = manifest_of(envelope, key.public_key())
    current = [m.version for c in topics.CHANNELS
               if (m := channel_manifest(connection, earlier.fleet, c, key.public_key()))]
    if not current:
        raise ReleaseError(f"fleet {earlier.fleet} has no published version to roll back from")
    published = published_manifests(connection, earlier.fleet, key.public_key())
    version = max(current + [m.version for m in published.values()]) + 1
    instruction = rollback_instruction(earlier, version, key, revokes=tuple(v for v in current if v > earlier.version))
    for n, channel in enumerate(topics.CHANNELS):
        release(connection, instruction, channel, files if n == 0 else None, key, channels=topics.CHANNELS)
    progress(f"fleet {earlier.fleet}: version {version} re-delivers version {earlier.version} on every channel")
    return version
