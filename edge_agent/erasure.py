"""Applying the fleet's signed erasure list (:mod:`shared.erasure`) on this device.

The MQTT worker hands each message of ``<prefix>/<fleet>/erasure`` to :meth:`FleetErasure.on_message`.
A list that verifies (:mod:`shared.fleet_documents`: signature, fleet, expiry, newer version) has
each entry above the last applied version looked up in the :class:`~edge_agent.erasure_index.ErasureIndex`;
a shopper found is crypto-shredded (:meth:`HistoryStore.delete_ref`: their data key first) and
forgotten by the outcome ledger. Only then is the list's version recorded in ``erasure.json``
(atomically): a crash half-way applies the list again at the next start, which is harmless
(erasing twice erases nothing more), and an older list is never applied again (a replay).

The status acknowledges it (:meth:`FleetErasure.status`): the version applied, how many requests
were applied and how many of them named a shopper of this device; never a digest or an id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.config import AgentConfig
from edge_agent.durable_files import write_atomic
from edge_agent.erasure_index import ErasureIndex
from edge_agent.errors import StartupError
from edge_agent.history_store import HistoryStore
from edge_agent.outcome_ledger import OutcomeLedger
from shared.erasure import parse_erasure_list, parse_secret
from shared.errors import BadInput, StorageError, UpdateRejected
from shared.fleet_documents import check_header, signed_text
from shared.signing import MAX_ENVELOPE_BYTES, TrustedKeys

log = logging.getLogger(__name__)

STATE_FILE = "erasure.json"


class FleetErasure:
    def __init__(self, data_dir: Path, trusted: Ed25519PublicKey | TrustedKeys, *, fleet: str, device_id: str,
                 index: ErasureIndex, history: HistoryStore, outcomes: OutcomeLedger,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = data_dir / STATE_FILE
        self._trusted, self._fleet, self._device = trusted, fleet, device_id
        self._index, self._history, self._outcomes, self._clock = index, history, outcomes, clock
        self._state: dict[str, object] = {"version": None, "requests": 0, "erased": 0, "digest": None}
        self._last: dict[str, object] | None = None
        try:
            loaded = json.loads(self._path.read_text())
            if isinstance(loaded, dict):
                self._state.update({k: loaded[k] for k in self._state if k in loaded})
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:  # a damaged state file: start over (re-applying is harmless)
            log.error("could not read %s (%s); erasure requests will be applied again", self._path, e)

    @property
    def version(self) -> int | None:
        version = self._state["version"]
        return version if isinstance(version, int) else None

    def _report(self, result: str, version: int | None, reason: str) -> None:
        self._last = {"result": result, "version": version, "reason": reason[:300], "at": round(self._clock(), 3)}

    def on_message(self, envelope: bytes) -> int:
        """Apply an erasure list; returns how many shoppers of this device it erased."""
        if not envelope:
            return 0  # the retained list was cleared
        if hashlib.sha256(envelope).hexdigest() == self._state["digest"]:
            return 0  # the list already applied (delivered again after a reconnect)
        now = datetime.fromtimestamp(self._clock(), UTC)
        try:
            erasures = parse_erasure_list(signed_text(envelope, self._trusted, MAX_ENVELOPE_BYTES))
            check_header(erasures.header, fleet=self._fleet, device_id=self._device, now=now, newest=self.version)
        except UpdateRejected as e:
            log.debug("erasure list refused: %s", e.reason)  # junk floods cost no log lines; the status says why
            self._report("rejected", None, f"{e.reason}: {e}")
            return 0
        pending = erasures.pending(self.version, now)
        erased = 0
        try:
            for entry in pending:
                ref = self._index.find(entry.user)
                if ref is None:
                    continue  # not a shopper of this device (or not since the index exists)
                self._history.delete_ref(ref)  # the data key first: crypto-shredding
                self._outcomes.forget_user(ref)
                self._index.drop(entry.user)
                erased += 1
            self._state.update(version=erasures.version, digest=hashlib.sha256(envelope).hexdigest(),
                               requests=int(str(self._state["requests"])) + len(pending),
                               erased=int(str(self._state["erased"])) + erased)
            write_atomic(self._path, json.dumps(self._state).encode())
        except (StorageError, OSError) as e:
            log.error("could not apply erasure list %d: %s", erasures.version, e)
            self._report("failed", erasures.version, f"storage: {e}")
            return erased
        log.info("applied erasure list %d: %d requests, %d shoppers of this device erased",
                 erasures.version, len(pending), erased)
        self._report("applied", erasures.version, f"{len(pending)} requests, {erased} shoppers erased here")
        return erased

    def status(self) -> dict[str, object]:
        """The acknowledgement in the agent's status: counts only."""
        return {"version": self.version, "requests": self._state["requests"], "erased": self._state["erased"],
                "last": self._last}


def load_secret(path: Path) -> bytes:
    """The fleet's erasure secret from a file only its owner can read; StartupError otherwise."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise StartupError(f"erasure.secret_file {path} is readable by others (mode {mode & 0o777:o}): "
                               f"chmod 600 {path}")
        return parse_secret(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as e:
        raise StartupError(f"cannot read erasure.secret_file {path}: {e}") from None
    except StartupError:
        raise
    except BadInput as e:
        raise StartupError(f"erasure.secret_file {path}: {e}") from None


def fleet_erasure(config: AgentConfig, trusted: Ed25519PublicKey | TrustedKeys, history: HistoryStore,
                  outcomes: OutcomeLedger) -> FleetErasure | None:
    """Fleet erasure wired to the history (which indexes every shopper it writes from now on);
    None when ``erasure.secret_file`` is not set."""
    if not config.erasure.secret_file:
        return None
    secret = load_secret(Path(config.erasure.secret_file))
    data_dir = config.agent.data_dir
    index = ErasureIndex(data_dir, secret, lambda: history.keyring.lookup_secret)
    history.on_users = index.remember
    return FleetErasure(data_dir, trusted, fleet=config.agent.fleet, device_id=config.agent.device_id,
                        index=index, history=history, outcomes=outcomes)
