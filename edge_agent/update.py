"""One download (pure): verify a signed manifest, then accept only its chunks.

The download's own steps, enforced in this order (a call out of order raises ``UpdateOrderError``);
the whole lifecycle around it (loading, trial, refusal, waiting for space) is
:mod:`edge_agent.lifecycle`::

    UpdateSession(envelope)  -> RECEIVING   signature, schema, fleet, contract, expiry, version,
                                            channel, revocation, size
    accept_chunk(...)        -> RECEIVING   each chunk checked against its length and sha256
    staged()                 -> STAGED      every chunk present (the caller checked whole-file hashes)
    activated()              -> ACTIVE      the caller loaded, self-tested and switched to the model

Any failure raises a ``BundleError`` (``SignatureError`` is one) whose ``reason`` goes into the agent status.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import UpdateOrderError
from edge_agent.lifecycle import State
from shared.bundle import Manifest, check_acceptable, parse_manifest, sha256_hex
from shared.errors import ChunkRejected
from shared.signing import TrustedKeys, verify
from shared.topics import STABLE, followed_channels


class UpdateSession:
    def __init__(
        self,
        envelope: bytes,
        trusted_key: Ed25519PublicKey | TrustedKeys,
        *,
        fleet: str,
        active_version: int | None,
        now: datetime,
        max_bundle_bytes: int,
        device_id: str | None = None,
        channel: str = STABLE,
        revoked: Collection[int] = (),
    ) -> None:
        self.envelope = envelope
        self.manifest: Manifest = parse_manifest(verify(envelope, trusted_key))
        check_acceptable(self.manifest, fleet=fleet, active_version=active_version, now=now, device_id=device_id,
                         max_bundle_bytes=max_bundle_bytes, rings=followed_channels(channel), revoked=revoked)
        self._missing = {
            (name, i) for name, entry in self.manifest.files.items() for i in range(len(entry.chunks))
        }
        self.step = State.RECEIVING
        self.received = 0  # chunks that came over the network (counted by the caller)
        self.from_origin = 0  # of those, chunks fetched from an origin over HTTP(S) (the rest: MQTT)
        self.reused = 0  # chunks found on disk: staged before a restart, or in an installed version

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def complete(self) -> bool:
        return not self._missing

    @property
    def missing_count(self) -> int:
        return len(self._missing)

    @property
    def chunk_count(self) -> int:
        return sum(len(entry.chunks) for entry in self.manifest.files.values())

    def missing(self) -> list[tuple[str, int]]:
        """(file, chunk index) of every chunk not received yet, in file order."""
        return sorted(self._missing)

    def chunk_length(self, name: str, index: int) -> int:
        return min(self.manifest.chunk_size, self.manifest.files[name].length - index * self.manifest.chunk_size)

    def reuse(self, name: str, index: int, data: bytes) -> bool:
        """Take a chunk found on disk if it verifies; False (and still missing) if it does not."""
        try:
            return self.accept_chunk(name, index, data)
        except ChunkRejected:
            return False

    def _expect(self, step: State) -> None:
        if self.step is not step:
            raise UpdateOrderError(f"update is {self.step.value}, not {step.value}")

    def offset(self, name: str, index: int) -> int:
        return index * self.manifest.chunk_size

    def accept_chunk(self, name: str, index: int, data: bytes) -> bool:
        """Check one chunk; True if it is new and must be written, False for a verified duplicate."""
        self._expect(State.RECEIVING)
        entry = self.manifest.files.get(name)
        if entry is None or not 0 <= index < len(entry.chunks):
            raise ChunkRejected(f"chunk {name}/{index} is not part of version {self.version}")
        expected = self.chunk_length(name, index)
        if len(data) != expected:
            raise ChunkRejected(f"chunk {name}/{index} has {len(data)} bytes, the manifest says {expected}")
        if sha256_hex(data) != entry.chunks[index]:
            raise ChunkRejected(f"chunk {name}/{index} does not match its sha256 in the manifest")
        if (name, index) not in self._missing:
            return False
        self._missing.discard((name, index))
        return True

    def staged(self) -> None:
        self._expect(State.RECEIVING)
        if self._missing:
            raise UpdateOrderError(f"{len(self._missing)} chunks are still missing")
        self.step = State.STAGED

    def activated(self) -> None:
        self._expect(State.STAGED)
        self.step = State.ACTIVE
