"""Key rotation documents: which Ed25519 keys sign for a fleet, and how that changes (pure).

An agent starts trusting the key it was provisioned with (``model.trusted_public_key``, the root
of trust). A rotation document says which keys sign from now on and which are revoked for good::

    {"schema": "edge-rec.key-rotation/1", "fleet": "default", "version": 2,
     "created": "...Z", "expires": "...Z",
     "keys": [{"keyid": "<16 hex>", "public_key": "<base64 of the 32 raw bytes>"}],
     "revoked": ["<16 hex>", ...]}

It travels in a multi-signature envelope (never mistaken for a manifest's single-signature one)::

    {"signed": "<document text>", "signatures": [{"keyid": "<hex>", "signature": "<base64>"}, ...]}

and the fleet's keys topic holds the whole chain, oldest first: ``{"rotations": [envelope, ...]}``,
so an agent offline through several rotations catches up link by link from what it trusts.

A link is accepted (:func:`apply`) only if, in this order:

1. a key the agent trusts now signed it (``bad_signature``): someone holding only a new key, or
   only a rotated-out or revoked one, cannot move the fleet;
2. it is a well-formed document of the agent's fleet, targeting no device (``malformed``, ``wrong_fleet``);
3. every key it trusts signed it too (``bad_signature``): proof the new key's holder has it;
4. none of its keys was ever revoked (``revoked``);
5. its version is above the agent's (``rollback``: a replayed older document).

The chain's newest link must not have expired (``expired``); older links may have, they were
valid when issued. Accepted, the trusted keys become the link's, the revoked set grows, and the
keys rotated out without being revoked stay good for what was accepted before (``retired``:
installed models, stored rules) but for nothing new.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.bounded_json import loads
from shared.errors import (
    ExpiredManifest,
    JsonRejected,
    MalformedDocument,
    Revoked,
    RollbackRejected,
    SignatureError,
    WrongFleet,
)
from shared.fleet_documents import Header, field_of, parse_header
from shared.signing import MAX_ENVELOPE_BYTES, key_id

SCHEMA = "edge-rec.key-rotation/1"
#: Keys one document may trust, revoked ids it may list, signatures an envelope may carry.
MAX_KEYS, MAX_REVOKED, MAX_SIGNATURES = 8, 256, 16
#: Rotations the keys topic keeps (an agent offline for more cannot catch up: reprovision it).
MAX_CHAIN = 64


@dataclass(frozen=True)
class Rotation:
    header: Header
    keys: tuple[Ed25519PublicKey, ...]
    revoked: frozenset[str]

    @property
    def version(self) -> int:
        return self.header.version

    def to_json(self) -> str:
        body = {**self.header.as_dict(), "keys": [{"keyid": key_id(k), "public_key": _raw(k)} for k in self.keys],
                "revoked": sorted(self.revoked)}
        del body["targets"]
        return json.dumps(body, sort_keys=True)


@dataclass(frozen=True)
class TrustState:
    """What an agent trusts: ``version`` 0 is the provisioned root key alone."""

    version: int
    keys: tuple[Ed25519PublicKey, ...]
    retired: tuple[Ed25519PublicKey, ...] = ()
    revoked: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def root(cls, key: Ed25519PublicKey) -> TrustState:
        return cls(0, (key,))

    def key_ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]


def _raw(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def parse_rotation(text: str) -> Rotation:
    header, data = parse_header(text, SCHEMA, frozenset({"keys", "revoked"}))
    if header.targets:
        raise MalformedDocument("a key rotation is for the whole fleet: it must not name targets")
    raw_keys, revoked = field_of(data, "keys", list), field_of(data, "revoked", list)
    assert isinstance(raw_keys, list) and isinstance(revoked, list)
    if not 1 <= len(raw_keys) <= MAX_KEYS:
        raise MalformedDocument(f"keys must list 1 to {MAX_KEYS} keys")
    if len(revoked) > MAX_REVOKED or not all(isinstance(r, str) and len(r) == 16 for r in revoked):
        raise MalformedDocument(f"revoked must list at most {MAX_REVOKED} key ids of 16 hex digits")
    keys = []
    for entry in raw_keys:
        if not isinstance(entry, Mapping):
            raise MalformedDocument("each entry of keys must be an object with keyid and public_key")
        try:
            key = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(str(field_of(entry, "public_key", str, "keys.")), validate=True))
        except (binascii.Error, ValueError):
            raise MalformedDocument("keys.public_key must be the base64 of a 32-byte Ed25519 key") from None
        if field_of(entry, "keyid", str, "keys.") != key_id(key):
            raise MalformedDocument("keys.keyid is not the id of its public_key")
        keys.append(key)
    if len({key_id(k) for k in keys}) != len(keys):
        raise MalformedDocument("keys lists a key twice")
    return Rotation(header, tuple(keys), frozenset(str(r) for r in revoked))


def sign_rotation(rotation: Rotation, signers: list[Ed25519PrivateKey]) -> dict[str, object]:
    """The envelope of ``rotation`` signed by each of ``signers`` (the current key and every new one)."""
    text = rotation.to_json()
    return {"signed": text, "signatures": [
        {"keyid": key_id(k.public_key()), "signature": base64.b64encode(k.sign(text.encode())).decode()}
        for k in signers]}


def chain_bytes(envelopes: list[dict[str, object]]) -> bytes:
    """The keys topic's message: every rotation, oldest first."""
    return json.dumps({"rotations": envelopes}).encode()


def parse_chain(payload: bytes) -> list[dict[str, object]]:
    """The envelopes of a keys topic message (not verified: :func:`apply` does that)."""
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise SignatureError(f"the key rotation chain is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        data = loads(payload)
    except JsonRejected as e:
        raise MalformedDocument(f"the key rotation chain is not acceptable JSON: {e}") from None
    chain = data.get("rotations") if isinstance(data, dict) else None
    if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN or not all(
            isinstance(e, dict) and isinstance(e.get("signed"), str) and isinstance(e.get("signatures"), list)
            for e in chain):
        raise MalformedDocument(f'the key rotation chain must be {{"rotations": [1 to {MAX_CHAIN} envelopes '
                                'with signed and signatures]}')
    return chain


def unverified(envelope: Mapping[str, object]) -> Rotation:
    """The document in a chain envelope, its signatures unchecked (the trainer's view of the topic)."""
    return parse_rotation(str(envelope["signed"]))


def _signers(envelope: Mapping[str, object], candidates: tuple[Ed25519PublicKey, ...]) -> set[str]:
    """Ids of the ``candidates`` whose signature of the envelope's text verifies."""
    signatures = envelope["signatures"]
    assert isinstance(signatures, list)
    if len(signatures) > MAX_SIGNATURES:
        raise SignatureError(f"a rotation carries at most {MAX_SIGNATURES} signatures")
    by_id = {key_id(k): k for k in candidates}
    text = str(envelope["signed"]).encode()
    found = set()
    for entry in signatures:
        if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
            raise SignatureError("each signature needs string fields keyid and signature")
        key = by_id.get(str(entry.get("keyid")))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(entry["signature"], validate=True), text)
        except (binascii.Error, InvalidSignature):
            raise SignatureError(f"the signature of key {key_id(key)} does not verify") from None
        found.add(key_id(key))
    return found


def apply(state: TrustState, envelope: Mapping[str, object], *, fleet: str) -> tuple[TrustState, Rotation]:
    """The trust after one rotation link (steps 1 to 5 of the module docstring); raises why not."""
    if not _signers(envelope, state.keys):
        raise SignatureError(f"the rotation is not signed by a key this agent trusts ({', '.join(state.key_ids())})")
    rotation = unverified(envelope)
    if rotation.header.fleet != fleet:
        raise WrongFleet(f"the rotation is for fleet {rotation.header.fleet!r}, this agent is in {fleet!r}")
    new_ids = {key_id(k) for k in rotation.keys}
    missing = new_ids - _signers(envelope, rotation.keys)
    if missing:
        raise SignatureError(f"key {sorted(missing)[0]} is trusted by the rotation but did not sign it")
    revoked = state.revoked | rotation.revoked
    if new_ids & revoked:
        raise Revoked(f"the rotation trusts key {sorted(new_ids & revoked)[0]}, which was revoked")
    if rotation.version <= state.version:
        raise RollbackRejected(f"rotation {rotation.version} is not newer than the accepted rotation {state.version}")
    retired = tuple({key_id(k): k for k in (*state.retired, *state.keys)
                     if key_id(k) not in new_ids | revoked}.values())
    return TrustState(rotation.version, rotation.keys, retired, revoked), rotation


def apply_chain(state: TrustState, chain: list[dict[str, object]], *, fleet: str,
                now: datetime | None) -> tuple[TrustState, list[dict[str, object]]]:
    """The trust after every link newer than ``state``, and those links; all or nothing.

    ``now``: check the newest link's expiry (None: links read back from the agent's own disk).
    """
    newer, last = [], None
    for envelope in chain:
        try:
            if unverified(envelope).version <= state.version:
                continue  # applied before (or a replayed prefix: the next link must still chain on)
        except MalformedDocument:
            pass  # apply() says why, after the signature check
        state, last = apply(state, envelope, fleet=fleet)
        newer.append(envelope)
    if last is None:
        newest = unverified(chain[-1]).version
        raise RollbackRejected(f"rotation {newest} is not newer than the accepted rotation {state.version}")
    if now is not None and last.header.expires_at <= now:
        raise ExpiredManifest(f"rotation {last.version} expired at {last.header.expires}")
    return state, newer


__all__ = ["MAX_CHAIN", "SCHEMA", "Rotation", "TrustState", "apply", "apply_chain",
           "chain_bytes", "parse_chain", "parse_rotation", "sign_rotation", "unverified"]
