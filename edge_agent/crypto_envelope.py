"""Authenticated encryption for the history store (pure: bytes in, bytes out).

Key hierarchy::

    device master key (32 bytes, a 0600 file or a systemd credential)
      └─ wraps (AES-GCM, bound to a label) ─┬─ the lookup secret: HMAC key for user references
                                           └─ one random 256-bit data key per user
    user data key ─ seals (AES-GCM) each history record, with associated data = user ref + position

Because the lookup secret and the data keys are random and only *wrapped* by the master key,
rotating the master key re-wraps 32-byte keys and never re-encrypts history. Destroying a user's
wrapped data key makes every record of that user unreadable for good (crypto-shredding).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent.errors import TamperedRecord

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class MasterKey:
    """Wraps and unwraps secrets under the device master key. Never logged, never stored here."""

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise ValueError(f"master key must be {MASTER_KEY_BYTES} bytes, got {len(key)}")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=b"edge-rec/master-key/v1")
        derived = hkdf.derive(key)
        self._wrap = AESGCM(derived[:32])
        #: Identifies the key without revealing it: stored beside what it wrapped.
        self.check = hmac.new(derived[32:], b"edge-rec key check", hashlib.sha256).digest()

    def wrap(self, label: bytes, secret: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._wrap.encrypt(nonce, secret, b"wrap|" + label)

    def unwrap(self, label: bytes, wrapped: bytes) -> bytes:
        try:
            return self._wrap.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], b"wrap|" + label)
        except InvalidTag:
            raise TamperedRecord("a wrapped key failed authentication") from None


def user_ref(lookup_secret: bytes, user_id: str) -> bytes:
    """Keyed hash of a user id: a stable lookup key that reveals nothing without the secret."""
    return hmac.new(lookup_secret, user_id.encode("utf-8"), hashlib.sha256).digest()


#: Signed: records are 0 and up, a user's purchase memory is -1 (the same bytes as unsigned for >= 0).
_SEQ = struct.Struct(">q")


def _record_aad(ref: bytes, seq: int) -> bytes:
    return b"ev|" + ref + _SEQ.pack(seq)


def seal_record(cipher: AESGCM, ref: bytes, seq: int, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, _record_aad(ref, seq))


def open_record(cipher: AESGCM, ref: bytes, seq: int, sealed: bytes) -> bytes:
    try:
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _record_aad(ref, seq))
    except InvalidTag:
        raise TamperedRecord(f"history record {seq} failed authentication") from None


def open_records(cipher: AESGCM, ref: bytes, rows: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """``open_record`` over many (seq, sealed) rows: the hot path of every recommendation."""
    prefix, pack, decrypt, out = b"ev|" + ref, _SEQ.pack, cipher.decrypt, []
    seq = -1
    try:
        for seq, sealed in rows:
            out.append(decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], prefix + pack(seq)))
    except InvalidTag:
        raise TamperedRecord(f"history record {seq} failed authentication") from None
    return out
