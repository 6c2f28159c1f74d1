"""The keys this device trusts for manifests, rules, erasure lists and rollback instructions.

At first start the store trusts the provisioned key (``model.trusted_public_key``) alone. The MQTT
worker hands each message of ``<prefix>/<fleet>/keys`` to :meth:`TrustStore.on_message`; a chain
of rotations that verifies link by link from what the device trusts now (the rules of
:mod:`shared.key_rotation`) replaces the trusted keys. The accepted chain is written atomically
to ``trust.json`` before it is used, and at every start verified again from the provisioned key:
a file that does not verify from it (tampered with, or the device reprovisioned with another key)
stops the agent with an error that names the fix, rather than trusting it or silently forgetting
a revocation.

Every verifier holds this store (it is a :class:`shared.signing.TrustedKeys`), so a rotation
takes effect at once everywhere; :meth:`trusted_keys` swaps one immutable state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.durable_files import write_atomic
from edge_agent.errors import StartupError
from shared.errors import UpdateRejected
from shared.key_rotation import TrustState, apply_chain, chain_bytes, parse_chain
from shared.signing import key_id

log = logging.getLogger(__name__)

TRUST_FILE = "trust.json"


class TrustStore:
    def __init__(self, data_dir: Path, root: Ed25519PublicKey, *, fleet: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._path, self._fleet, self._clock = data_dir / TRUST_FILE, fleet, clock
        self._root = root
        self._state = TrustState.root(root)
        self._chain: list[dict[str, object]] = []
        self._payload = b""
        self._last: dict[str, object] | None = None
        self._load()

    def _load(self) -> None:
        try:
            payload = self._path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise StartupError(f"cannot read the trust store {self._path}: {e}") from e
        try:
            chain = parse_chain(payload)
            self._state, self._chain = apply_chain(self._state, chain, fleet=self._fleet, now=None)
        except UpdateRejected as e:
            raise StartupError(
                f"the trust store {self._path} does not verify from model.trusted_public_key (key "
                f"{key_id(self._root)}): {e.reason}: {e}. If the device was reprovisioned with another key on "
                f"purpose, delete {self._path}; it catches up from the fleet's keys topic") from None
        self._payload = payload
        log.info("trusting keys %s (rotation %d)", ", ".join(self._state.key_ids()), self._state.version)

    def trusted_keys(self, stored: bool = False) -> tuple[Ed25519PublicKey, ...]:
        state = self._state
        return (*state.keys, *state.retired) if stored else state.keys

    @property
    def version(self) -> int:
        return self._state.version

    def _report(self, result: str, version: int | None, reason: str) -> None:
        self._last = {"result": result, "version": version, "reason": reason[:300], "at": round(self._clock(), 3)}

    def on_message(self, payload: bytes) -> bool:
        """A chain of rotations from the keys topic; True if the trusted keys changed."""
        if not payload or payload == self._payload:
            return False  # cleared, or the chain applied (delivered again after a reconnect)
        now = datetime.fromtimestamp(self._clock(), UTC)
        try:
            state, newer = apply_chain(self._state, parse_chain(payload), fleet=self._fleet, now=now)
        except UpdateRejected as e:
            log.debug("key rotation refused: %s", e.reason)  # junk floods cost no log lines; the status says why
            self._report("rejected", None, f"{e.reason}: {e}")
            return False
        chain = [*self._chain, *newer]
        stored = chain_bytes(chain)
        try:
            write_atomic(self._path, stored)
        except OSError as e:
            log.error("could not store key rotation %d: %s", state.version, e)
            self._report("failed", state.version, f"storage: {e}")
            return False
        self._state, self._chain, self._payload = state, chain, payload
        log.warning("key rotation %d accepted: now trusting %s; revoked: %s", state.version,
                    ", ".join(state.key_ids()), ", ".join(sorted(state.revoked)) or "none")
        self._report("accepted", state.version, f"trusting {', '.join(state.key_ids())}")
        return True

    def status(self) -> dict[str, object]:
        """Key ids (fingerprints) and the rotation version: never key material."""
        state = self._state
        return {"version": state.version, "trusted": state.key_ids(), "retired": [key_id(k) for k in state.retired],
                "revoked": sorted(state.revoked), "last": self._last}
