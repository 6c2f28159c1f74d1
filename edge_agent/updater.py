"""Applies model updates: the one object the agent's transport and daemon talk to.

It wires the update jobs, each in its own module: the pure lifecycle and boot decisions
(:mod:`edge_agent.lifecycle`), downloads (:mod:`edge_agent.downloads`), activation
(:mod:`edge_agent.activation`), crash recovery and trial (:mod:`edge_agent.recovery`), the
full-disk policy (:mod:`edge_agent.disk_space`), bundle loading (:mod:`edge_agent.bundle_loader`)
and the serving model (:mod:`edge_agent.active_model`). Messages come from one worker thread (see
:mod:`edge_agent.mqtt_link`), never concurrently; the trial is committed from the daemon's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import downloads, recovery
from edge_agent.active_model import ActiveModel
from edge_agent.lifecycle import Fetch
from edge_agent.model_store import ModelStore
from edge_agent.update_context import UpdateContext, UpdatePolicy
from edge_agent.update_report import Outcome, Reporter, UpdateResult
from shared.bundle import Manifest
from shared.errors import SignatureError
from shared.signing import TrustedKeys, verify
from shared.topics import STABLE

log = logging.getLogger(__name__)


class Updater:
    def __init__(
        self,
        store: ModelStore,
        active: ActiveModel,
        trusted_key: Ed25519PublicKey | TrustedKeys,
        *,
        fleet: str,
        max_bundle_bytes: int,
        num_threads: int,
        device_id: str | None = None,
        channel: str = STABLE,
        on_report: Callable[[UpdateResult], None] = lambda result: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        trial_s: float = 300.0,
    ) -> None:
        policy = UpdatePolicy(trusted_key, fleet, max_bundle_bytes, num_threads, clock, trial_s, device_id, channel)
        self.ctx = UpdateContext(store, active, Reporter(active, on_report), policy)
        self.store, self.active = store, active

    # -- what the transport asks ----------------------------------------------------------------
    def receiving(self) -> int | None:
        """The version whose chunks are wanted now, if any."""
        return self.ctx.lifecycle.receiving()

    def to_fetch(self) -> Fetch | None:
        """The chunks still missing from the download in flight."""
        return self.ctx.lifecycle.to_fetch()

    def download_manifest(self) -> Manifest | None:
        """The verified manifest of the download in flight (its files' origin URLs and chunk hashes)."""
        session = self.ctx.lifecycle.session
        return session.manifest if session is not None and self.receiving() is not None else None

    # -- messages (the worker thread) -----------------------------------------------------------
    def on_manifest(self, envelope: bytes, later_ring: bool = False, device_topic: bool = False) -> int | None:
        """Start receiving the bundle a manifest announces; returns its version, or None if refused.
        (Where it came from: see :func:`edge_agent.downloads.on_manifest`.)"""
        return downloads.on_manifest(self.ctx, envelope, later_ring, device_topic)

    def on_chunk(self, version: int, name: str, index: int, data: bytes, from_origin: bool = False) -> bool:
        """Take one chunk (from the broker, or ``from_origin``); True when the bundle it belongs to was
        completed and handled."""
        return downloads.on_chunk(self.ctx, version, name, index, data, from_origin)

    def discard(self, reason: str) -> None:
        """Count a message no signature vouched for (see :class:`edge_agent.update_report.Discarded`)."""
        self.ctx.reporter.discard(reason)

    def trust_changed(self) -> None:
        """The trusted keys changed (a key rotation): give up the download in flight if its manifest
        was signed by a key rotated out or revoked; it never installs."""
        session = self.ctx.lifecycle.session
        if session is None:
            return
        try:
            verify(session.envelope, self.ctx.policy.trusted_key)
        except SignatureError as e:
            self.store.discard_staging(session.version)
            self.ctx.lifecycle.drop()
            self.ctx.reporter.report(session.version, Outcome.REJECTED, f"{e.reason}: after a key rotation: {e}")

    def retry_when_room(self) -> bool:
        """Start again an update that failed for lack of space, if there is room now; True if it did."""
        lifecycle = self.ctx.lifecycle
        if lifecycle.waiting is None or lifecycle.session is not None:
            return False
        waiting = lifecycle.room_found(self.store.free_bytes())
        if waiting is None:
            return False
        log.info("disk space freed: retrying the update to version %s", waiting.version)
        self.on_manifest(waiting.envelope)
        return True

    # -- boot, trial and stop -------------------------------------------------------------------
    def boot(self) -> None:
        """Load the last good model from disk (the active version, else the previous one), then
        resume an unfinished download from what is already staged."""
        recovery.recover(self.ctx)
        downloads.resume_staged(self.ctx)

    def commit_if_due(self) -> bool:
        """End the trial of the serving model once it has served ``trial_s`` seconds; True if it did."""
        return recovery.commit_if_due(self.ctx)

    def stopped_cleanly(self) -> None:
        """The agent is stopping on request: this run of a model on trial was no crash."""
        recovery.stopped_cleanly(self.ctx)
