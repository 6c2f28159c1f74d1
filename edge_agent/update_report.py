"""What the agent says about updates: the outcome of each, and the count of discarded messages.

``UpdateResult`` goes into the status (``last_update``) and the metrics; its ``result`` is an
:class:`Outcome`, a string enum, so the JSON on the wire carries the same strings as ever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.active_model import ActiveModel

log = logging.getLogger("edge_agent.updater")

#: Log lines about discarded messages (see :class:`Discarded`): at most one per this many seconds.
DISCARD_LOG_INTERVAL_S = 10.0


class Outcome(StrEnum):
    ACTIVATED = "activated"  # verified, loaded, self-tested and serving
    REJECTED = "rejected"  # a manifest signed by the fleet key that this agent must not install
    FAILED = "failed"  # did not load, killed the agent, or no room on the disk
    RECEIVING = "receiving"  # a download began or resumed
    DISCARDED = "discarded"  # a message no signature vouched for (see Discarded)


@dataclass
class UpdateResult:
    version: int | None
    result: Outcome
    reason: str
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "result": self.result.value, "reason": self.reason, "at": self.at}


@dataclass
class Discarded:
    """Messages no signature vouched for (unsigned or foreign-signed manifests, chunks that do not
    match the manifest) and errors in handling a message. Anyone with write access to the broker
    can send these, so they are counted and the last one kept here, apart from ``last_update``:
    junk never erases the record of the last genuine update (rollout verdicts read it), and a flood
    of junk costs a counter, not a log line or a status message each."""

    count: int = 0
    reason: str = ""
    at: float = 0.0
    logged_at: float = -DISCARD_LOG_INTERVAL_S  # monotonic
    unlogged: int = 0

    def to_json(self) -> dict[str, object]:
        return {"count": self.count, "reason": self.reason, "at": self.at}


class Reporter:
    """Records each outcome where the status reads it (``active``), logs it, tells ``on_report``."""

    def __init__(self, active: ActiveModel, on_report: Callable[[UpdateResult], None]) -> None:
        self.active = active
        self.on_report = on_report

    def report(self, version: int | None, outcome: Outcome, reason: str) -> None:
        result = UpdateResult(version, outcome, reason)
        self.active.last_update = result
        log.info("model update %s: version %s: %s", result.result, result.version, result.reason)
        self.on_report(result)

    def repeats_rejection(self, reason: str) -> bool:
        last = self.active.last_update
        return last is not None and last.result is Outcome.REJECTED and last.reason == reason

    def discard(self, reason: str) -> None:
        """Count a message no signature vouched for (see :class:`Discarded`); logged at most every
        DISCARD_LOG_INTERVAL_S seconds, the status republished by the caller's throttle."""
        discarded = self.active.discarded
        discarded.count += 1
        discarded.reason, discarded.at = reason[:300], time.time()
        discarded.unlogged += 1
        now = time.monotonic()
        if now - discarded.logged_at >= DISCARD_LOG_INTERVAL_S:
            log.warning("discarded %d unverified update message(s) since the last such line; the last: %s",
                        discarded.unlogged, discarded.reason)
            discarded.logged_at, discarded.unlogged = now, 0
        self.on_report(UpdateResult(None, Outcome.DISCARDED, discarded.reason))
