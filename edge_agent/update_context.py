"""What the update jobs share: the settings, the model store, the serving model, the reporter,
and the lifecycle with its journal (persisted here, and only here)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.active_model import ActiveModel
from edge_agent.journal import Journal
from edge_agent.lifecycle import Lifecycle
from edge_agent.model_store import ModelStore
from edge_agent.update_report import Reporter
from shared.signing import TrustedKeys
from shared.topics import STABLE


@dataclass(frozen=True)
class UpdatePolicy:
    trusted_key: Ed25519PublicKey | TrustedKeys
    fleet: str
    max_bundle_bytes: int
    num_threads: int
    clock: Callable[[], datetime]
    trial_s: float = 300.0
    device_id: str | None = None
    channel: str = STABLE


class UpdateContext:
    def __init__(self, store: ModelStore, active: ActiveModel, reporter: Reporter, policy: UpdatePolicy) -> None:
        self.store = store
        self.active = active
        self.reporter = reporter
        self.policy = policy
        self.lifecycle = Lifecycle(store.journal.read())
        self.lock = threading.Lock()  # guards the trial (the daemon commits it from its own thread)

    def persist(self, journal: Journal) -> None:
        """Write ``journal`` atomically, then make it the lifecycle's (unchanged if the write fails)."""
        if journal != self.lifecycle.journal:
            self.store.journal.write(journal)
            self.lifecycle.journal = journal

    def keep_pointed(self) -> None:
        """Delete installed versions the journal no longer points to."""
        journal = self.lifecycle.journal
        self.store.prune({v for v in (journal.active, journal.previous) if v is not None})
