"""The outcome ledger on disk: one file, sealed like history and replaced atomically.

The ledger's snapshot (:mod:`edge_agent.outcome_ledger`) holds keyed user references and item
hashes, never ids; it is still sealed with AES-GCM under a data key of its own from the keyring
(wrapped by the device master key, so a master key rotation covers it and a copy of the file is
unreadable without the key). Saved every ``experiment.save_interval_s`` and at a clean stop; a
kill -9 loses at most the outcomes of that interval, never the history.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.crypto_envelope import open_record, seal_record
from edge_agent.durable_files import write_atomic
from edge_agent.errors import TamperedRecord
from edge_agent.keyring import Keyring
from edge_agent.outcome_ledger import OutcomeLedger

log = logging.getLogger(__name__)

OUTCOMES_FILE = "outcomes.sealed"
#: The keyring entry of the ledger's data key (user references are 32-byte HMACs: no clash).
_KEY_REF = b"edge-rec/outcome-ledger"
_SEQ = 0


class OutcomeFile:
    def __init__(self, folder: Path, keyring: Keyring) -> None:
        self.path = folder / OUTCOMES_FILE
        self._keyring = keyring
        self._saved_at_change = -1
        self._lock = threading.Lock()  # the periodic save and the one at the stop

    def _cipher(self) -> AESGCM:
        key = self._keyring.data_key(_KEY_REF, create=True)
        assert key is not None
        return AESGCM(key)

    def load_into(self, ledger: OutcomeLedger) -> bool:
        """Restore the last saved ledger; False (and a fresh ledger) when there is none or it is
        unreadable: outcomes are statistics, not worth refusing to start for."""
        try:
            sealed = self.path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            ledger.restore(open_record(self._cipher(), _KEY_REF, _SEQ, sealed))
        except (TamperedRecord, ValueError, KeyError, OSError) as e:
            log.error("the saved outcome ledger %s cannot be read (%s); outcomes start again", self.path, e)
            return False
        self._saved_at_change = ledger.changes
        return True

    def save(self, ledger: OutcomeLedger) -> bool:
        """Write the ledger if it changed since the last save; True when it wrote."""
        with self._lock:
            changes = ledger.changes
            if changes == self._saved_at_change:
                return False
            write_atomic(self.path, seal_record(self._cipher(), _KEY_REF, _SEQ, ledger.snapshot()))
            self._saved_at_change = changes
            return True
