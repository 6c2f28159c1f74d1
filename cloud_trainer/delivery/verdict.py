"""What a rollout decides at each look at the fleet: wait, promote or abort, and why.

Shared by the canary health verdicts (:mod:`cloud_trainer.delivery.rollout`) and the outcome test
(:mod:`cloud_trainer.delivery.outcome_judge`), which may overrule them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Decision(StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    ABORT = "abort"


@dataclass
class Verdict:
    decision: Decision
    healthy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # device -> why
    waiting: list[str] = field(default_factory=list)
    why: str = ""
