"""Authenticated encryption of history records and wrapping of per-user data keys (pure).

Key hierarchy: the device master key (32 random bytes) derives, with HKDF, a lookup key (for the
keyed hash of user ids) and a wrapping key. Each user gets a random 256-bit data key, stored only
wrapped (AES-GCM under the wrapping key, bound to the user's lookup hash). Records are AES-GCM
under the user's data key with associated data binding them to the user and their sequence
number, so a record cannot be moved to another user or position, nor altered, unnoticed.
Destroying a user's wrapped data key makes their records unreadable for good (crypto-shredding).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12


class TamperedRecord(ValueError):
    """A ciphertext failed authentication: altered, moved, or under another key."""


def _derive(master_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"edge-rec/" + purpose).derive(
        master_key
    )


class Envelope:
    """Seals and opens records and data keys under one device master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise ValueError(f"master key must be {MASTER_KEY_BYTES} bytes, got {len(master_key)}")
        self._lookup_key = _derive(master_key, b"user-lookup")
        self._wrap = AESGCM(_derive(master_key, b"key-wrap"))
        self.key_check = hmac.new(_derive(master_key, b"key-check"), b"edge-rec", hashlib.sha256).digest()

    def user_ref(self, user_id: str) -> bytes:
        """Keyed hash of a user id: a stable lookup key that reveals nothing without the master key."""
        return hmac.new(self._lookup_key, user_id.encode("utf-8"), hashlib.sha256).digest()

    def wrap_data_key(self, user_ref: bytes, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._wrap.encrypt(nonce, data_key, b"dk|" + user_ref)

    def unwrap_data_key(self, user_ref: bytes, wrapped: bytes) -> bytes:
        try:
            return self._wrap.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], b"dk|" + user_ref)
        except InvalidTag:
            raise TamperedRecord("a user's data key failed authentication") from None

    @staticmethod
    def new_data_key() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    @staticmethod
    def _record_aad(user_ref: bytes, seq: int) -> bytes:
        return b"ev|" + user_ref + struct.pack(">Q", seq)

    @classmethod
    def seal_record(cls, data_key: bytes, user_ref: bytes, seq: int, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(data_key).encrypt(nonce, plaintext, cls._record_aad(user_ref, seq))

    @classmethod
    def open_record(cls, data_key: bytes, user_ref: bytes, seq: int, sealed: bytes) -> bytes:
        try:
            return AESGCM(data_key).decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], cls._record_aad(user_ref, seq)
            )
        except InvalidTag:
            raise TamperedRecord(f"history record {seq} failed authentication") from None
