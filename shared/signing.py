"""Ed25519 signing of manifests: the signed envelope and its verification.

The envelope carries the manifest as the exact text that was signed, so verification never
depends on re-serialising JSON the same way on both sides::

    {"signed": "<manifest JSON text>", "keyid": "<hex>", "signature": "<base64>"}

Key files: the private key is PKCS#8 PEM (0600), the public key SubjectPublicKeyInfo PEM.

Verifiers take one pinned key or a :class:`TrustedKeys` (an agent's trust store, which key
rotations change: see :mod:`shared.key_rotation`); the envelope must name one of its keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.bounded_json import loads
from shared.errors import JsonRejected, SignatureError

MAX_ENVELOPE_BYTES = 1 << 20


class TrustedKeys(Protocol):
    """The keys an agent trusts now (a key rotation replaces them)."""

    def trusted_keys(self, stored: bool = False) -> tuple[Ed25519PublicKey, ...]:
        """The keys for data arriving now; with ``stored``, for data accepted earlier and read back
        from disk: also the keys rotated out but never revoked."""
        ...


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the private key is not an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    return key


def sign(signed_text: str, key: Ed25519PrivateKey) -> bytes:
    """The envelope (UTF-8 JSON bytes) for ``signed_text``."""
    signature = key.sign(signed_text.encode("utf-8"))
    envelope = {
        "signed": signed_text,
        "keyid": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(envelope).encode("utf-8")


def verify(envelope: bytes, trusted: Ed25519PublicKey | TrustedKeys, stored: bool = False) -> str:
    """The signed text of ``envelope`` if a ``trusted`` key signed it; raises SignatureError otherwise.

    ``stored``: the envelope was accepted earlier and read back from disk (see :class:`TrustedKeys`).
    """
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise SignatureError(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    keys = {key_id(k): k for k in ((trusted,) if isinstance(trusted, Ed25519PublicKey)
                                   else trusted.trusted_keys(stored))}
    if not any(kid.encode() in envelope for kid in keys):  # cheap: junk is refused without being parsed
        raise SignatureError("signed by a key this agent does not trust (its key id is not in the envelope)")
    try:
        data = loads(envelope)  # depth and numbers bounded: an unsigned sender picks no exception
    except JsonRejected:
        raise SignatureError("envelope is not JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("signed", "keyid", "signature")
    ):
        raise SignatureError("envelope needs string fields signed, keyid and signature")
    key = keys.get(data["keyid"])
    if key is None:
        raise SignatureError(f"signed by key {data['keyid'][:16]!r}, which this agent does not trust")
    try:
        signature = base64.b64decode(data["signature"], validate=True)
        key.verify(signature, data["signed"].encode("utf-8"))
    except (binascii.Error, InvalidSignature):
        raise SignatureError("signature does not verify") from None
    return str(data["signed"])
