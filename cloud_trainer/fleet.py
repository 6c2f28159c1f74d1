"""The ML engineer's view of the fleet over MQTT: agent statuses, canary rollouts, rollbacks.

Statuses are the retained messages agents publish on ``<prefix>/<fleet>/status/<device>``; the
decisions are made by :class:`cloud_trainer.rollout.CanaryJudge`, which is pure.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_trainer.publisher import BrokerConnection, PublishError, manifest_of, read_bundle, rollback_instruction
from cloud_trainer.rollout import CanaryJudge, Decision, RolloutPolicy, Verdict
from shared import topics
from shared.signing import load_private_key


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


def roll_out(
    connection: BrokerConnection,
    bundle: Path,
    canaries: list[str],
    policy: RolloutPolicy,
    key_path: Path,
    progress: Callable[[str], None] = print,
    poll_s: float = 0.5,
) -> RolloutResult:
    """Canary first; stable only when every canary is healthy; otherwise abort and roll back.

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
    watcher = FleetWatcher(connection, fleet)
    stable = connection.channel_manifest(fleet, topics.STABLE, key.public_key())
    judge = CanaryJudge(version, canaries, policy, started=time.time())
    canary = connection.release(envelope, topics.CANARY, files, key, channels=(topics.CANARY,))
    progress(f"version {version} published to the canary channel; watching {', '.join(canaries)}")
    verdict = Verdict(Decision.WAIT)
    last_line = ""
    while verdict.decision is Decision.WAIT:
        time.sleep(poll_s)
        verdict = judge.judge(watcher.statuses(), time.time())
        line = (f"canaries: {len(verdict.healthy)} healthy, {len(verdict.waiting)} waiting, "
                f"{len(verdict.failed)} failed")
        if line != last_line:
            progress(line)
            last_line = line
    if verdict.decision is Decision.ABORT:
        progress(f"ABORT: {verdict.why}")
        result = RolloutResult(version, Decision.ABORT, verdict.why)
        if stable is not None:
            result.rollback_version = version + 1
            previous = connection.fetch_files(stable)
            instruction = rollback_instruction(stable, version + 1, key, revokes=(version,))
            connection.release(instruction, topics.CANARY, previous, key, channels=(topics.CANARY,))
            progress(f"canary channel rolled back to version {stable.version}'s files as version {version + 1}, "
                     f"which revokes version {version}")
        return result
    progress(f"promoting version {version} to stable: {verdict.why}")
    connection.release(canary.envelope, topics.STABLE, None, key, channels=topics.CHANNELS)
    deadline = time.monotonic() + policy.timeout_s
    while True:
        statuses = watcher.statuses()
        devices = _stable_devices(statuses)
        done = [d for d in devices if statuses[d].get("model_version") == version]
        line = f"stable: {len(done)} of {len(devices)} online agents on version {version}"
        if line != last_line:
            progress(line)
            last_line = line
        if len(done) == len(devices) or time.monotonic() > deadline:
            why = verdict.why if len(done) == len(devices) else f"timed out: {line}"
            return RolloutResult(version, Decision.PROMOTE, why, None, len(done), len(devices))
        time.sleep(poll_s)


def roll_back(
    connection: BrokerConnection, bundle: Path, key_path: Path, progress: Callable[[str], None] = print
) -> int:
    """Re-deliver an earlier bundle's files to every channel as a new, signed version that revokes
    the versions the channels named (newer than the earlier bundle)."""
    key = load_private_key(key_path.read_bytes())
    envelope, files = read_bundle(bundle)
    earlier = manifest_of(envelope, key.public_key())
    current = [m.version for c in topics.CHANNELS
               if (m := connection.channel_manifest(earlier.fleet, c, key.public_key()))]
    if not current:
        raise PublishError(f"fleet {earlier.fleet} has no published version to roll back from")
    version = max(current) + 1
    instruction = rollback_instruction(earlier, version, key, revokes=tuple(v for v in current if v > earlier.version))
    for n, channel in enumerate(topics.CHANNELS):
        connection.release(instruction, channel, files if n == 0 else None, key, channels=topics.CHANNELS)
    progress(f"fleet {earlier.fleet}: version {version} re-delivers version {earlier.version} on every channel")
    return version
