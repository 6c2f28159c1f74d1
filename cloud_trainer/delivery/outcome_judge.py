"""Rollouts judged by outcome (pure): an always-valid sequential test of conversion per request
between a treatment and a reference, and the judge that runs it on agents' statuses while a
rollout watches the canaries.

The unit is a recommendation request; it converted when at least one recommended item was carted
or bought within the attribution window (``converted_requests / requests`` of
:class:`shared.outcomes.OutcomeCell`). Two comparisons (:class:`Comparison`):

- ``holdout``: the new version's model arm against the new version's holdout arm (the popularity
  list, or the version it replaced with the agents' ``experiment.control = "previous"``), summed
  over the canaries. Shoppers are assigned to arms by a hash, so this one is a
  randomised experiment: the test's error rate is the whole story.
- ``stable``: the new version's model arm on the canaries against the stable version's model arm
  on the stable-channel devices, counted from the rollout's start (each device's cell at the first
  look is subtracted, so both sides cover the same period). Canary stores are not a random draw of
  the fleet's stores: the error rate covers sampling noise, not differences between the stores.

The test. With treatment and reference rates ``p_t`` and ``p_r`` and the non-inferiority
``margin`` m (relative to the reference), the quantity judged is::

    theta = p_t - (1 - m) * p_r          (> 0: the treatment loses less than m of the reference's rate)

estimated by ``theta_hat = x_t/n_t - (1 - m) * x_r/n_r`` with the variance
``V = q_t(1 - q_t)/n_t + (1 - m)^2 q_r(1 - q_r)/n_r`` (``q = (x + 1)/(n + 2)``, so an arm without
a conversion yet gets no zero-width interval). Over ``n = n_t + n_r`` requests, the normal-mixture
confidence sequence (Robbins' mixture; the asymptotic confidence sequence of Waudby-Smith, Arbour,
Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences", Annals of Statistics 2024, Theorem 2.2, with ``sigma_hat^2 = n V``) is::

    theta_hat +- sqrt(V) * sqrt( 2 (n rho^2 + 1) / (n rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )

It is the always-valid interval of Johari, Pekelis and Walsh ("Always valid inference: continuous
monitoring of A/B tests", Operations Research 2022; the mixture SPRT with a normal mixing
distribution) with mixing variance ``tau^2 = rho^2 sigma_hat^2``; ``rho^2 = (2 log(1/alpha) +
log(2 log(1/alpha) + 1)) / t*`` makes it narrowest at ``t* = tuned_for_requests`` (any fixed choice
keeps the guarantee). With probability at least ``1 - alpha`` the interval holds theta at every
look, however often one looks: ``P(exists n: theta outside) <= alpha`` (asymptotically: the
normal approximation of Bernoulli counts, requests independent, the arms' shares of traffic
steady).

Decisions: PROMOTE once the lower bound is above 0 (the treatment converts at least ``1 - m``
times the reference's rate), ABORT once the upper bound is below 0 (it converts less), WAIT
otherwise, and always WAIT until each side has ``min_requests`` requests. A decision is wrong only
if the interval missed theta at that look, so ``P(wrong decision) <= alpha`` time-uniformly, and
the first decision is kept (:class:`OutcomeJudge`). For any true theta other than exactly 0 the
interval's width shrinks like ``sqrt(log n / n)`` and one of the two decisions comes; how soon
depends on traffic: near the margin it takes many requests (the rollout's ``--timeout`` then
aborts).

Requests of the same shopper are not independent (a shopper who buys converts several requests):
the Bernoulli variance understates the true one when shoppers repeat a lot, and alpha is then
optimistic. The agents report per-request counts only (:mod:`shared.outcomes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cloud_trainer.delivery.verdict import Decision, Verdict
from shared import topics
from shared.outcomes import Arm, OutcomeCell, fleet_cells


class Comparison(StrEnum):
    HOLDOUT = "holdout"  # the new version's model arm vs its holdout arm, on the canaries
    STABLE = "stable"  # the new version's model arm on canaries vs the stable version's on stable devices


@dataclass(frozen=True)
class OutcomePolicy:
    comparison: Comparison
    alpha: float = 0.05  # P(wrong decision), over the whole rollout
    margin: float = 0.1  # the treatment may convert up to this share less than the reference
    min_requests: int = 1000  # per side, before any decision
    tuned_for_requests: int = 10_000  # both sides together: where the interval is narrowest

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1 (exclusive), not {self.alpha}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be from 0 up to 1 (exclusive), not {self.margin}")
        if self.min_requests < 1 or self.tuned_for_requests < 1:
            raise ValueError("min_requests and tuned_for_requests must be at least 1")


@dataclass(frozen=True)
class Interval:
    estimate: float
    lower: float
    upper: float


def confidence_sequence(treatment: tuple[int, int], reference: tuple[int, int], alpha: float, margin: float,
                        tuned_for_requests: int) -> Interval:
    """The always-valid interval for ``p_t - (1 - margin) p_r`` from ``(converted, requests)`` of
    each side (formula in the module docstring); both sides need at least one request."""
    (x_t, n_t), (x_r, n_r) = treatment, reference
    if n_t < 1 or n_r < 1 or not 0 <= x_t <= n_t or not 0 <= x_r <= n_r:
        raise ValueError(f"counts must be 0 <= converted <= requests, requests >= 1: {treatment}, {reference}")
    keep = 1.0 - margin
    q_t, q_r = (x_t + 1) / (n_t + 2), (x_r + 1) / (n_r + 2)
    variance = q_t * (1 - q_t) / n_t + keep**2 * q_r * (1 - q_r) / n_r
    log_inv_alpha = math.log(1 / alpha)
    rho2 = (2 * log_inv_alpha + math.log(2 * log_inv_alpha + 1)) / tuned_for_requests
    n_rho2 = (n_t + n_r) * rho2
    half = math.sqrt(variance * 2 * (n_rho2 + 1) / n_rho2 * (0.5 * math.log(n_rho2 + 1) + log_inv_alpha))
    estimate = x_t / n_t - keep * x_r / n_r
    return Interval(estimate, estimate - half, estimate + half)


@dataclass(frozen=True)
class OutcomeVerdict:
    decision: Decision
    evidence: str  # one line: rates, counts, the interval, alpha
    interval: Interval | None = None  # None until both sides have min_requests


def _rate(cell: OutcomeCell) -> str:
    rate = cell.converted_requests / cell.requests if cell.requests else 0.0
    return f"{rate:.2%} of {cell.requests} requests"


def compare(treatment: OutcomeCell, reference: OutcomeCell, policy: OutcomePolicy,
            names: tuple[str, str] = ("treatment", "reference")) -> OutcomeVerdict:
    """One look: the decision on the counts so far, and the evidence for it."""
    counts = f"{names[0]} converts {_rate(treatment)}, {names[1]} {_rate(reference)}"
    if min(treatment.requests, reference.requests) < policy.min_requests:
        return OutcomeVerdict(Decision.WAIT, f"{policy.comparison}: {counts}; waiting for {policy.min_requests} "
                                             "requests a side")
    interval = confidence_sequence((treatment.converted_requests, treatment.requests),
                                   (reference.converted_requests, reference.requests),
                                   policy.alpha, policy.margin, policy.tuned_for_requests)
    share = f"{1 - policy.margin:.0%} of {names[1]}'s rate"
    if interval.lower > 0:
        decision, reading = Decision.PROMOTE, f"{names[0]} converts at least {share}"
    elif interval.upper < 0:
        decision, reading = Decision.ABORT, f"{names[0]} converts less than {share}"
    else:
        decision, reading = Decision.WAIT, "undecided"
    evidence = (f"{policy.comparison}: {counts}; {names[0]} - {1 - policy.margin:.2f} x {names[1]} in "
                f"[{interval.lower:+.4f}, {interval.upper:+.4f}] (always valid, alpha {policy.alpha:g}): {reading}")
    return OutcomeVerdict(decision, evidence, interval)


def _minus(cell: OutcomeCell, start: OutcomeCell) -> OutcomeCell:
    counts = {name: max(getattr(cell, name) - getattr(start, name), 0)
              for name in ("requests", "impressions", "clicks", "conversions", "converted_requests")}
    return OutcomeCell(cell.model_version, cell.arm, **counts, revenue=max(cell.revenue - start.revenue, 0.0))


class OutcomeJudge:
    """Runs the test at every look at the fleet during a rollout; keeps the first decision."""

    def __init__(self, version: int, canaries: list[str], policy: OutcomePolicy, stable_version: int | None) -> None:
        if policy.comparison is Comparison.STABLE and stable_version is None:
            raise ValueError("--judge-outcome stable needs a version on the stable channel to compare with; "
                             "use --judge-outcome holdout")
        self.version, self.canaries, self.policy = version, list(canaries), policy
        self.stable_version = stable_version
        self._start: dict[str, OutcomeCell] = {}  # stable comparison: each reference device's cell at first sight
        self.decided: OutcomeVerdict | None = None
        self.evidence = ""  # the last look's evidence line

    def _reference_since_start(self, statuses: Mapping[str, Mapping[str, Any]]) -> OutcomeCell:
        assert self.stable_version is not None
        key = (self.stable_version, Arm.MODEL)
        total = OutcomeCell(*key)
        for device, status in sorted(statuses.items()):
            if device in self.canaries or status.get("channel", topics.STABLE) != topics.STABLE:
                continue
            cell = fleet_cells({device: status}).get(key)
            if cell is None:
                continue
            start = self._start.setdefault(device, cell)
            if cell.requests < start.requests:  # the device's counts started again (a reset): all are new
                start = self._start[device] = OutcomeCell(*key)
            total = total.plus(_minus(cell, start))
        return total

    def judge(self, statuses: Mapping[str, Mapping[str, Any]]) -> OutcomeVerdict:
        canary_cells = fleet_cells(statuses, self.canaries)
        treatment = canary_cells.get((self.version, Arm.MODEL), OutcomeCell(self.version, Arm.MODEL))
        if self.policy.comparison is Comparison.HOLDOUT:
            reference = canary_cells.get((self.version, Arm.HOLDOUT), OutcomeCell(self.version, Arm.HOLDOUT))
            names = ("model", "holdout")
        else:
            reference = self._reference_since_start(statuses)
            names = (f"v{self.version}", f"stable v{self.stable_version}")
        verdict = compare(treatment, reference, self.policy, names)
        if self.decided is None and verdict.decision is not Decision.WAIT:
            self.decided = verdict
        verdict = self.decided or verdict
        self.evidence = verdict.evidence
        return verdict

    def gate(self, canaries: Verdict, statuses: Mapping[str, Mapping[str, Any]], timed_out: bool) -> Verdict:
        """The rollout's verdict: the canaries' health verdict, overruled by the outcome test.

        Promote only when both say promote; abort when either says abort, or at the deadline
        without an outcome decision."""
        outcome = self.judge(statuses)
        if canaries.decision is Decision.ABORT:
            return canaries
        rate = f"(always-valid test: wrong with probability at most {self.policy.alpha * 100:g}%)"
        if outcome.decision is Decision.ABORT:
            return Verdict(Decision.ABORT, canaries.healthy, canaries.failed, canaries.waiting,
                           f"{outcome.evidence} {rate}")
        if canaries.decision is Decision.PROMOTE and outcome.decision is Decision.PROMOTE:
            return Verdict(Decision.PROMOTE, canaries.healthy, canaries.failed, canaries.waiting,
                           f"{canaries.why}; {outcome.evidence} {rate}")
        if timed_out:
            return Verdict(Decision.ABORT, canaries.healthy, canaries.failed, canaries.waiting,
                           f"no outcome verdict before the timeout: {outcome.evidence}")
        return Verdict(Decision.WAIT, canaries.healthy, canaries.failed, canaries.waiting, canaries.why)
