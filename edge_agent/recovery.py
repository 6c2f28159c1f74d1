"""Crash recovery at boot and the trial of a new model: carries out what
:func:`edge_agent.lifecycle.plan_boot` decides, then serves the last good installed model."""

from __future__ import annotations

import logging
import time

from edge_agent.bundle_loader import load_installed
from edge_agent.errors import ModelLoadError
from edge_agent.lifecycle import plan_boot
from edge_agent.update_context import UpdateContext
from edge_agent.update_report import Outcome
from shared.errors import BundleError

log = logging.getLogger("edge_agent.updater")


def recover(ctx: UpdateContext) -> None:
    """Judge an interrupted load and a trial the agent died under; serve the active version, else
    the previous one."""
    plan = plan_boot(ctx.lifecycle.journal)
    if plan.retried_load is not None:
        log.warning("the agent stopped while loading model version %s; it will be tried again", plan.retried_load)
    ctx.persist(plan.journal)
    if plan.discard_staging is not None:
        ctx.store.discard_staging(plan.discard_staging)
    if plan.repointed:
        ctx.keep_pointed()
    for version, reason in plan.failures:
        ctx.reporter.report(version, Outcome.FAILED, reason)
    for candidate in plan.candidates:
        try:
            ctx.active.current = load_installed(ctx.store, candidate, ctx.policy.trusted_key, ctx.policy.num_threads)
            if candidate != ctx.lifecycle.journal.active:
                ctx.persist(ctx.lifecycle.journal.point(candidate, None))
                ctx.keep_pointed()
        except (OSError, BundleError, ModelLoadError) as e:  # a SignatureError is a BundleError
            log.error("installed model version %s is unusable: %s", candidate, e)
            continue
        ctx.lifecycle.booted(candidate, plan.trial, time.monotonic())
        log.info("serving installed model version %s", candidate)
        _load_control(ctx, candidate)
        return
    log.info("no installed model yet; waiting for the first bundle")


def _load_control(ctx: UpdateContext, serving: int) -> None:
    """The previous version as the holdout's control, when the agent keeps one and can load it."""
    previous = ctx.lifecycle.journal.previous
    if not ctx.active.keep_control or previous is None or previous == serving or previous in ctx.store.revoked():
        return
    try:
        ctx.active.control = load_installed(ctx.store, previous, ctx.policy.trusted_key, ctx.policy.num_threads)
    except (OSError, BundleError, ModelLoadError) as e:
        log.warning("previous model version %s cannot be the holdout's control (%s); it gets popular items",
                    previous, e)


def commit_if_due(ctx: UpdateContext) -> bool:
    """End the trial of the serving model once it has served ``trial_s`` seconds; True if it did."""
    lifecycle, trial_s = ctx.lifecycle, ctx.policy.trial_s
    with ctx.lock:
        serving = ctx.active.version
        if not lifecycle.trial_due(serving, time.monotonic(), trial_s):
            return False
        if lifecycle.journal.trial == serving:
            ctx.persist(lifecycle.journal.end_trial())
            log.info("model version %s passed its %gs trial", serving, trial_s)
        lifecycle.commit()
        return True


def stopped_cleanly(ctx: UpdateContext) -> None:
    """The agent is stopping on request: this run of a model on trial was no crash."""
    with ctx.lock:
        journal = ctx.lifecycle.stopped_cleanly(ctx.active.version)
        if journal is not None:
            ctx.persist(journal)
